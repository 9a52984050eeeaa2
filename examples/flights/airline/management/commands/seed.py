"""`manage.py seed --flights 10000`: realistic data of a chosen size, fast (bulk_create in batches).

Deterministic for a given --seed. Flights between real airports; same-country routes go into the
domestic partition, the rest into the international one. Optional demo users share ONE Argon2 hash
computed once (hashing is deliberately slow: 10k hashes would take minutes), and random bookings
make seat availability non-trivial.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import secrets

from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from airline.models import (
    BOOKING_FIELD,
    Airport,
    Booking,
    DomesticFlight,
    InternationalFlight,
    Kind,
    Passenger,
)

AIRPORTS = [
    ("ATL", "Hartsfield-Jackson", "Atlanta", "US"), ("LAX", "Los Angeles Intl", "Los Angeles", "US"),
    ("ORD", "O'Hare", "Chicago", "US"), ("DFW", "Dallas/Fort Worth", "Dallas", "US"),
    ("DEN", "Denver Intl", "Denver", "US"), ("JFK", "John F. Kennedy", "New York", "US"),
    ("SFO", "San Francisco Intl", "San Francisco", "US"), ("SEA", "Seattle-Tacoma", "Seattle", "US"),
    ("BOS", "Logan", "Boston", "US"), ("MIA", "Miami Intl", "Miami", "US"),
    ("LHR", "Heathrow", "London", "GB"), ("MAN", "Manchester", "Manchester", "GB"),
    ("EDI", "Edinburgh", "Edinburgh", "GB"), ("CDG", "Charles de Gaulle", "Paris", "FR"),
    ("NCE", "Cote d'Azur", "Nice", "FR"), ("LYS", "Saint-Exupery", "Lyon", "FR"),
    ("FRA", "Frankfurt", "Frankfurt", "DE"), ("MUC", "Munich", "Munich", "DE"),
    ("BER", "Brandenburg", "Berlin", "DE"), ("HAM", "Hamburg", "Hamburg", "DE"),
    ("MAD", "Barajas", "Madrid", "ES"), ("BCN", "El Prat", "Barcelona", "ES"),
    ("FCO", "Fiumicino", "Rome", "IT"), ("MXP", "Malpensa", "Milan", "IT"),
    ("AMS", "Schiphol", "Amsterdam", "NL"), ("ZRH", "Zurich", "Zurich", "CH"),
    ("HND", "Haneda", "Tokyo", "JP"), ("KIX", "Kansai", "Osaka", "JP"),
    ("CTS", "New Chitose", "Sapporo", "JP"),
    ("SYD", "Kingsford Smith", "Sydney", "AU"), ("MEL", "Tullamarine", "Melbourne", "AU"),
    ("BNE", "Brisbane", "Brisbane", "AU"), ("YYZ", "Pearson", "Toronto", "CA"),
    ("YVR", "Vancouver Intl", "Vancouver", "CA"), ("GRU", "Guarulhos", "Sao Paulo", "BR"),
    ("GIG", "Galeao", "Rio de Janeiro", "BR"), ("DXB", "Dubai Intl", "Dubai", "AE"),
    ("SIN", "Changi", "Singapore", "SG"), ("DEL", "Indira Gandhi", "Delhi", "IN"),
    ("BOM", "Chhatrapati Shivaji", "Mumbai", "IN"),
]
AIRCRAFT = [("A320", 180), ("B737-800", 189), ("A321neo", 220), ("E190", 100), ("B787-9", 290),
            ("A350-900", 315), ("B777-300ER", 396)]
FIRST_NAMES = ["Ada", "Alan", "Grace", "Linus", "Ken", "Barbara", "Edsger", "Margaret", "Dennis", "Radia",
               "Tim", "Frances", "John", "Hedy", "Donald", "Sophie", "Niklaus", "Adele", "Leslie", "Karen"]
LAST_NAMES = ["Lovelace", "Turing", "Hopper", "Torvalds", "Thompson", "Liskov", "Dijkstra", "Hamilton",
              "Ritchie", "Perlman", "Berners-Lee", "Allen", "McCarthy", "Lamarr", "Knuth", "Wilson",
              "Wirth", "Goldberg", "Lamport", "Sparck Jones"]
BATCH = 2000


class Command(BaseCommand):
    help = "Create airports, flights (domestic + international partitions), users and bookings."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--flights", type=int, default=10000, help="number of flights (default 10000)")
        parser.add_argument("--users", type=int, default=20, help="demo accounts user1..userN")
        parser.add_argument("--bookings", type=int, default=2000, help="random existing bookings")
        parser.add_argument("--days", type=int, default=60, help="flights depart within this many days")
        parser.add_argument("--seed", type=int, default=42, help="random seed (same seed, same data)")
        parser.add_argument("--if-empty", action="store_true", help="do nothing when flights exist already")

    def handle(self, *args: object, **opts: int) -> None:
        if opts["if_empty"] and (DomesticFlight.objects.exists() or InternationalFlight.objects.exists()):
            self.stdout.write("seed: flights exist already, nothing to do (--if-empty)")
            return
        rng = random.Random(opts["seed"])
        with transaction.atomic():
            airports = self._airports()
            flights = self._flights(rng, airports, opts["flights"], opts["days"])
            users = self._users(opts["users"])
            n_bookings = self._bookings(rng, users, flights, opts["bookings"])
        self.stdout.write(f"seeded: {len(airports)} airports, {opts['flights']} flights "
                          f"({DomesticFlight.objects.count()} domestic, "
                          f"{InternationalFlight.objects.count()} "
                          f"international in total), {len(users)} users, {n_bookings} bookings")

    def _airports(self) -> list[Airport]:
        existing = set(Airport.objects.values_list("code", flat=True))
        Airport.objects.bulk_create([Airport(code=c, name=n, city=city, country=cc)
                                     for c, n, city, cc in AIRPORTS if c not in existing])
        return list(Airport.objects.all())

    def _flights(self, rng: random.Random, airports: list[Airport], n: int, days: int) -> list[object]:
        by_country: dict[str, list[Airport]] = {}
        for a in airports:
            by_country.setdefault(a.country, []).append(a)
        multi = [v for v in by_country.values() if len(v) > 1]
        start = timezone.now().replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        dom: list[DomesticFlight] = []
        intl: list[InternationalFlight] = []
        for _ in range(n):
            if rng.random() < 0.55:  # a bit more than half of all flights are domestic
                origin, dest = rng.sample(rng.choice(multi), 2)
            else:
                origin, dest = rng.sample(airports, 2)
            domestic = origin.country == dest.country
            minutes = 5 * (rng.randrange(10, 66) if domestic else rng.randrange(18, 180))
            hours = minutes / 60
            departs = start + dt.timedelta(minutes=5 * rng.randrange(days * 24 * 12))
            aircraft, capacity = rng.choice(AIRCRAFT[:4] if domestic else AIRCRAFT)
            fields = dict(number=f"TX{rng.randrange(100, 10000)}", origin=origin, destination=dest,
                          departs_at=departs, arrives_at=departs + dt.timedelta(minutes=minutes),
                          aircraft=aircraft, capacity=capacity,
                          price_cents=int(rng.uniform(40, 140) * hours) * 100 + rng.choice([0, 49, 99]))
            (dom.append(DomesticFlight(**fields)) if domestic else intl.append(InternationalFlight(**fields)))
        DomesticFlight.objects.bulk_create(dom, batch_size=BATCH)
        InternationalFlight.objects.bulk_create(intl, batch_size=BATCH)
        return list(DomesticFlight.objects.only("id", "capacity")[:n]) + list(
            InternationalFlight.objects.only("id", "capacity")[:n])

    def _users(self, n: int) -> list[User]:
        if n <= 0:
            return []
        # One hash for all demo users: the password comes from the environment or is random (and
        # printed), never from the repository.
        password = os.environ.get("FLIGHTS_DEMO_PASSWORD") or secrets.token_urlsafe(12)
        hashed = make_password(password)
        existing = set(User.objects.values_list("username", flat=True))
        User.objects.bulk_create([User(username=f"user{i}", password=hashed, first_name=rng_name(i))
                                  for i in range(1, n + 1) if f"user{i}" not in existing], batch_size=BATCH)
        if not os.environ.get("FLIGHTS_DEMO_PASSWORD"):
            self.stdout.write(f"demo users user1..user{n} have the password: {password}")
        return list(User.objects.filter(username__startswith="user"))

    def _bookings(self, rng: random.Random, users: list[User], flights: list[object], n: int) -> int:
        if not users or not flights or n <= 0:
            return 0
        passengers = Passenger.objects.bulk_create(
            [Passenger(account=rng.choice(users),
                       full_name=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                       passport_number=f"P{rng.randrange(10**7, 10**8)}") for _ in range(n)],
            batch_size=BATCH)
        taken: set[tuple[str, int, int]] = set()
        bookings: list[Booking] = []
        for p in passengers:
            f = rng.choice(flights)
            seat_index = rng.randrange(f.capacity)  # type: ignore[attr-defined]
            key = (f.KIND.value, f.pk, seat_index)  # type: ignore[attr-defined]
            if key in taken:
                continue
            taken.add(key)
            seat = f"{seat_index // 6 + 1}{'ABCDEF'[seat_index % 6]}"
            kind: Kind = f.KIND  # type: ignore[attr-defined]
            bookings.append(Booking(passenger=p, seat=seat, **{BOOKING_FIELD[kind]: f}))
        Booking.objects.bulk_create(bookings, batch_size=BATCH)
        return len(bookings)


def rng_name(i: int) -> str:
    return FIRST_NAMES[i % len(FIRST_NAMES)]
