"""Seat availability behind Django's low-level cache API.

Counting a flight's bookings is the costly query on the flight page and in the API; the answer
only changes when a booking is made, so it is cached under `seats:<ref>` and deleted (after the
booking's transaction commits, so no reader can re-cache the old count in between) by `booked()`.
The cache is the shared one (database or Redis), so a booking on server A is seen by server B.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from airline.models import BOOKING_FIELD, Booking, FlightBase


def _key(flight: FlightBase) -> str:
    return f"seats:{flight.ref}"


def taken_seats(flight: FlightBase) -> set[str]:
    return set(Booking.objects.filter(**{BOOKING_FIELD[flight.KIND]: flight}).values_list("seat", flat=True))


def seats_left(flight: FlightBase) -> int:
    """Free seats; from the cache when the data cache is on, else counted now."""
    if "data" not in settings.FLIGHTS_CACHES:
        return flight.capacity - len(taken_seats(flight))
    left = cache.get(_key(flight))
    if left is None:
        left = flight.capacity - len(taken_seats(flight))
        cache.set(_key(flight), left, settings.SEATS_CACHE_S)
    return int(left)


def booked(flight: FlightBase) -> None:
    """Called by the booking view inside its transaction: forget the count once it commits."""
    transaction.on_commit(lambda: cache.delete(_key(flight)))
