"""Airports, flights, passengers, bookings.

Partitioning (from the notes: "split flights into flights_domestic and flights_international"):
flights live in TWO tables with the same columns, `airline_domesticflight` and
`airline_internationalflight`. A search that names a kind reads only that table (smaller index, fewer
rows); only "any kind" reads both (UNION ALL). The partition is part of a flight's public reference:
`D123` is row 123 of the domestic table, `I123` row 123 of the international one, so a lookup by
reference goes straight to one table. A booking points at exactly one of the two (two nullable
foreign keys + a check constraint), so the database still enforces referential integrity.
On PostgreSQL the same idea is `PARTITION BY LIST (kind)`; two tables keep it portable to SQLite.
"""

from __future__ import annotations

import enum

from django.conf import settings
from django.db import models

from airline import labels


class Kind(enum.Enum):
    DOMESTIC = "D"
    INTERNATIONAL = "I"

    @property
    def label(self) -> str:
        return self.name.lower()


class Airport(models.Model):
    code = models.CharField(max_length=3, unique=True)  # IATA
    name = models.CharField(max_length=120)
    city = models.CharField(max_length=80)
    country = models.CharField(max_length=2)  # ISO 3166 alpha-2

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} ({self.city})"


class FlightBase(models.Model):
    """Columns shared by both partitions."""

    number = models.CharField(max_length=8)          # e.g. "TX1234"
    origin = models.ForeignKey(Airport, on_delete=models.PROTECT, related_name="+")
    destination = models.ForeignKey(Airport, on_delete=models.PROTECT, related_name="+")
    departs_at = models.DateTimeField()
    arrives_at = models.DateTimeField()
    aircraft = models.CharField(max_length=20)
    capacity = models.PositiveIntegerField()
    price_cents = models.PositiveIntegerField()

    KIND: Kind

    class Meta:
        abstract = True
        ordering = ["departs_at"]

    @property
    def ref(self) -> str:
        return f"{self.KIND.value}{self.pk}"

    @property
    def kind(self) -> str:
        return self.KIND.label

    @property
    def price(self) -> str:
        return f"{self.price_cents // 100}.{self.price_cents % 100:02d}"

    @property
    def arrival_days_label(self) -> str:
        """"+1 day" when the flight lands on a later (UTC) date than it leaves, else ""."""
        return labels.day_offset_label(labels.arrival_day_offset(self.departs_at, self.arrives_at))

    @property
    def duration(self) -> str:
        return labels.duration_label(int((self.arrives_at - self.departs_at).total_seconds() // 60))

    def __str__(self) -> str:
        return f"{self.number} {self.origin_id}->{self.destination_id} {self.departs_at:%Y-%m-%d %H:%M}"


class DomesticFlight(FlightBase):
    KIND = Kind.DOMESTIC

    class Meta(FlightBase.Meta):
        indexes = [models.Index(fields=["origin", "destination", "departs_at"]),
                   models.Index(fields=["departs_at"])]


class InternationalFlight(FlightBase):
    KIND = Kind.INTERNATIONAL

    class Meta(FlightBase.Meta):
        indexes = [models.Index(fields=["origin", "destination", "departs_at"]),
                   models.Index(fields=["departs_at"])]


# Explicit registry (no import side effects): partition letter -> model, and booking column.
PARTITIONS: dict[Kind, type[FlightBase]] = {Kind.DOMESTIC: DomesticFlight,
                                            Kind.INTERNATIONAL: InternationalFlight}
BOOKING_FIELD: dict[Kind, str] = {Kind.DOMESTIC: "domestic_flight",
                                  Kind.INTERNATIONAL: "international_flight"}


def flight_by_ref(ref: str) -> FlightBase | None:
    """`D123` -> DomesticFlight 123; anything malformed or unknown -> None (callers answer 404)."""
    if len(ref) < 2 or not ref[1:].isdigit() or len(ref) > 20:
        return None
    try:
        kind = Kind(ref[0].upper())
    except ValueError:
        return None
    model = PARTITIONS[kind]
    return model.objects.select_related("origin", "destination").filter(pk=int(ref[1:])).first()


class Passenger(models.Model):
    """A traveller; one account may book for several people (names are free text: escaped on output)."""

    account = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="passengers")
    full_name = models.CharField(max_length=120)
    passport_number = models.CharField(max_length=20, blank=True)

    def __str__(self) -> str:
        return self.full_name


class Booking(models.Model):
    passenger = models.ForeignKey(Passenger, on_delete=models.CASCADE, related_name="bookings")
    domestic_flight = models.ForeignKey(DomesticFlight, null=True, blank=True, on_delete=models.CASCADE,
                                        related_name="bookings")
    international_flight = models.ForeignKey(InternationalFlight, null=True, blank=True,
                                             on_delete=models.CASCADE, related_name="bookings")
    seat = models.CharField(max_length=4)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(domestic_flight__isnull=False, international_flight__isnull=True)
                           | models.Q(domestic_flight__isnull=True, international_flight__isnull=False)),
                name="booking_exactly_one_flight"),
            models.UniqueConstraint(fields=["domestic_flight", "seat"], name="uniq_domestic_seat"),
            models.UniqueConstraint(fields=["international_flight", "seat"], name="uniq_international_seat"),
        ]

    @property
    def code(self) -> str:
        """The confirmation code shown after booking and on "My bookings" (derived from the id)."""
        return labels.booking_code(self.pk)

    @property
    def flight(self) -> FlightBase:
        return self.domestic_flight or self.international_flight  # type: ignore[return-value]
