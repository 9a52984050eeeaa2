"""What the pages print about a flight or a booking, as pure functions (no Django, table-tested).

Why here and not in templates: the list row (search.Row) and the flight page (models.FlightBase)
must say the same thing, and "+1 day" or a confirmation code is logic a template should not own.
"""

from __future__ import annotations

import datetime as dt

# Booking codes: 6 characters from 32 that cannot be confused when read aloud or copied by hand
# (no 0/O, no 1/I). 32**6 = 2**30 codes.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 6
_CODE_SPACE = len(CODE_ALPHABET) ** CODE_LENGTH
# An odd multiplier is invertible modulo 2**30, so pk -> code is one-to-one (no two bookings share a
# code below 2**30 bookings) while consecutive bookings get codes that look unrelated.
_CODE_MULTIPLIER = 0x2F5A_9E37
_CODE_OFFSET = 0x1B87_3593


def _utc_date(moment: dt.datetime) -> dt.date:
    """The calendar date the pages print: they show UTC, and a naive datetime is taken as UTC."""
    return (moment if moment.tzinfo is None else moment.astimezone(dt.UTC)).date()


def arrival_day_offset(departs: dt.datetime, arrives: dt.datetime) -> int:
    """How many calendar days (in UTC, as printed) the arrival falls after the departure."""
    return (_utc_date(arrives) - _utc_date(departs)).days


def day_offset_label(days: int) -> str:
    """Timetable notation next to an arrival time: "" on the same day, "+1 day", "+2 days"."""
    if days == 0:
        return ""
    return f"{days:+d} day" + ("" if abs(days) == 1 else "s")


def duration_label(minutes: int) -> str:
    """"55 min" under an hour, else "7 h 05" (the form timetables use)."""
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d}"


def booking_code(pk: int) -> str:
    """The confirmation code a user is shown for booking `pk`: derived, so nothing extra is stored
    and every booking (seeded or old) has one. A reference for humans, not a secret: bookings are
    shown only to their account, never looked up by code."""
    n = (pk * _CODE_MULTIPLIER + _CODE_OFFSET) % _CODE_SPACE
    chars = []
    for _ in range(CODE_LENGTH):
        n, digit = divmod(n, len(CODE_ALPHABET))
        chars.append(CODE_ALPHABET[digit])
    return "".join(chars)
