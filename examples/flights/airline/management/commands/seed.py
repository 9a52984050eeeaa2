"""`manage.py seed --flights 10000`: realistic data of a chosen size, fast (bulk_create in batches).

Deterministic for a given --seed (all randomness comes from one random.Random). Flights between real
airports (airline.geo: coordinates); a flight's duration follows the great-circle distance of its
route (geo.block_minutes), and its aircraft is one that has the range. Same-country routes go into
the domestic partition, the rest into the international one. Optional demo users share ONE Argon2 hash
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

from airline.geo import AIRPORTS, block_minutes, route_km
from airline.models import (
    BOOKING_FIELD,
    Airport,
    Booking,
    DomesticFlight,
    InternationalFlight,
    Kind,
    Passenger,
)

# (type, seats, typical range in km). The first four are narrow-bodies, the only ones flown domestic.
AIRCRAFT = [("A320", 180, 6100), ("B737-800", 189, 5400), ("A321neo", 220, 7400), ("E190", 100, 4500),
            ("B787-9", 290, 14000), ("A350-900", 315, 15000), ("B777-300ER", 396, 13600)]
# Demo accounts are exactly user1, user2, ...: never a registered "userbob" (seed gives demo users
# random bookings; demo_password sets their password).
DEMO_USERNAME_REGEX = r"^user[1-9][0-9]*$"
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
        Airport.objects.bulk_create([Airport(code=a.code, name=a.name, city=a.city, country=a.country)
                                     for a in AIRPORTS if a.code not in existing])
        # Only airports with known coordinates get flights (a duration needs a distance).
        known = {a.code for a in AIRPORTS}
        return [a for a in Airport.objects.all() if a.code in known]

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
            km = route_km(origin.code, dest.code)
            minutes = block_minutes(km)
            hours = minutes / 60
            departs = start + dt.timedelta(minutes=5 * rng.randrange(days * 24 * 12))
            aircraft, capacity = pick_aircraft(rng, km, domestic)
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
        demo = User.objects.filter(username__regex=DEMO_USERNAME_REGEX)
        existing = {f"user{i}" for i in range(1, n + 1)} & set(demo.values_list("username", flat=True))
        missing = [i for i in range(1, n + 1) if f"user{i}" not in existing]
        if missing:
            # One hash for all new demo users: the password comes from the environment or is random
            # (and printed), never from the repository.
            from_env = os.environ.get("FLIGHTS_DEMO_PASSWORD", "")
            password = from_env or secrets.token_urlsafe(12)
            hashed = make_password(password)
            User.objects.bulk_create([User(username=f"user{i}", password=hashed, first_name=rng_name(i))
                                      for i in missing], batch_size=BATCH)
            names = user_range(missing)
            self.stdout.write(f"demo users {names}: password from FLIGHTS_DEMO_PASSWORD" if from_env
                              else f"demo users {names} have the password: {password}")
        if existing:
            self.stdout.write(f"{len(existing)} demo users existed already and keep their password "
                              "(manage.py demo_password sets FLIGHTS_DEMO_PASSWORD on all of them)")
        return list(demo.order_by("id"))

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


def pick_aircraft(rng: random.Random, km: float, domestic: bool) -> tuple[str, int]:
    """A random type that can fly `km` nonstop (domestic: narrow-bodies only); when none can (the
    seed keeps some routes longer than any airliner flies), the longest-range type of the choice."""
    choice = AIRCRAFT[:4] if domestic else AIRCRAFT
    able = [a for a in choice if a[2] >= km] or [max(choice, key=lambda a: a[2])]
    name, seats, _ = rng.choice(able)
    return name, seats


def user_range(numbers: list[int]) -> str:
    """How the commands name a set of demo users: "user3", "user1..user20", "3 of user1..user9"."""
    lo, hi = min(numbers), max(numbers)
    if lo == hi:
        return f"user{lo}"
    span = f"user{lo}..user{hi}"
    return span if len(set(numbers)) == hi - lo + 1 else f"{len(set(numbers))} of {span}"
