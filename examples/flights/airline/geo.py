"""The seeded airports with their coordinates, great-circle distance and block time.

Why a module without Django: `manage.py seed` derives every flight's duration from here, and the
tests check the same table and the same maths in-process (no settings, no database), so a typo in
a coordinate or a change in the formula shows up as a failing row, not as a 2-hour Sydney-London.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class AirportInfo(NamedTuple):
    code: str      # IATA
    name: str
    city: str
    country: str   # ISO 3166 alpha-2
    lat: float     # degrees north (negative: south)
    lon: float     # degrees east (negative: west)


AIRPORTS: tuple[AirportInfo, ...] = (
    AirportInfo("ATL", "Hartsfield-Jackson", "Atlanta", "US", 33.6367, -84.4281),
    AirportInfo("LAX", "Los Angeles Intl", "Los Angeles", "US", 33.9416, -118.4085),
    AirportInfo("ORD", "O'Hare", "Chicago", "US", 41.9786, -87.9048),
    AirportInfo("DFW", "Dallas/Fort Worth", "Dallas", "US", 32.8968, -97.0380),
    AirportInfo("DEN", "Denver Intl", "Denver", "US", 39.8617, -104.6731),
    AirportInfo("JFK", "John F. Kennedy", "New York", "US", 40.6398, -73.7789),
    AirportInfo("SFO", "San Francisco Intl", "San Francisco", "US", 37.6190, -122.3749),
    AirportInfo("SEA", "Seattle-Tacoma", "Seattle", "US", 47.4490, -122.3093),
    AirportInfo("BOS", "Logan", "Boston", "US", 42.3643, -71.0052),
    AirportInfo("MIA", "Miami Intl", "Miami", "US", 25.7932, -80.2906),
    AirportInfo("LHR", "Heathrow", "London", "GB", 51.4706, -0.4619),
    AirportInfo("MAN", "Manchester", "Manchester", "GB", 53.3537, -2.2750),
    AirportInfo("EDI", "Edinburgh", "Edinburgh", "GB", 55.9500, -3.3725),
    AirportInfo("CDG", "Charles de Gaulle", "Paris", "FR", 49.0097, 2.5479),
    AirportInfo("NCE", "Cote d'Azur", "Nice", "FR", 43.6584, 7.2159),
    AirportInfo("LYS", "Saint-Exupery", "Lyon", "FR", 45.7256, 5.0811),
    AirportInfo("FRA", "Frankfurt", "Frankfurt", "DE", 50.0333, 8.5706),
    AirportInfo("MUC", "Munich", "Munich", "DE", 48.3538, 11.7861),
    AirportInfo("BER", "Brandenburg", "Berlin", "DE", 52.3667, 13.5033),
    AirportInfo("HAM", "Hamburg", "Hamburg", "DE", 53.6304, 9.9882),
    AirportInfo("MAD", "Barajas", "Madrid", "ES", 40.4719, -3.5626),
    AirportInfo("BCN", "El Prat", "Barcelona", "ES", 41.2971, 2.0785),
    AirportInfo("LIS", "Humberto Delgado", "Lisbon", "PT", 38.7742, -9.1342),
    AirportInfo("FCO", "Fiumicino", "Rome", "IT", 41.8003, 12.2389),
    AirportInfo("MXP", "Malpensa", "Milan", "IT", 45.6306, 8.7281),
    AirportInfo("AMS", "Schiphol", "Amsterdam", "NL", 52.3086, 4.7639),
    AirportInfo("ZRH", "Zurich", "Zurich", "CH", 47.4647, 8.5492),
    AirportInfo("HND", "Haneda", "Tokyo", "JP", 35.5523, 139.7798),
    AirportInfo("KIX", "Kansai", "Osaka", "JP", 34.4347, 135.2440),
    AirportInfo("CTS", "New Chitose", "Sapporo", "JP", 42.7752, 141.6923),
    AirportInfo("SYD", "Kingsford Smith", "Sydney", "AU", -33.9461, 151.1772),
    AirportInfo("MEL", "Tullamarine", "Melbourne", "AU", -37.6690, 144.8410),
    AirportInfo("BNE", "Brisbane", "Brisbane", "AU", -27.3842, 153.1175),
    AirportInfo("YYZ", "Pearson", "Toronto", "CA", 43.6777, -79.6248),
    AirportInfo("YVR", "Vancouver Intl", "Vancouver", "CA", 49.1939, -123.1844),
    AirportInfo("GRU", "Guarulhos", "Sao Paulo", "BR", -23.4356, -46.4731),
    AirportInfo("GIG", "Galeao", "Rio de Janeiro", "BR", -22.8100, -43.2506),
    AirportInfo("DXB", "Dubai Intl", "Dubai", "AE", 25.2528, 55.3644),
    AirportInfo("SIN", "Changi", "Singapore", "SG", 1.3502, 103.9940),
    AirportInfo("DEL", "Indira Gandhi", "Delhi", "IN", 28.5562, 77.1000),
    AirportInfo("BOM", "Chhatrapati Shivaji", "Mumbai", "IN", 19.0887, 72.8679),
)
BY_CODE: dict[str, AirportInfo] = {a.code: a for a in AIRPORTS}

EARTH_RADIUS_KM = 6371.0        # mean radius: good to ~0.5% for great-circle distances
# Block time (gate to gate) = fixed part + distance at cruise speed. The fixed part is taxi out and
# in (~25 min) plus what climb, descent and approach lose against cruise speed (~25 min); with 830
# km/h it matches published schedules: AMS-LHR 1 h 15, JFK-LAX 5 h 35, LHR-JFK 7 h 30 (both ways
# averaged, since the seed has no winds).
FIXED_MIN = 50
CRUISE_KMH = 830.0
ROUND_TO_MIN = 5                # timetables print 5-minute steps


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km between two points given in degrees (stable for short distances)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def block_minutes(distance_km: float) -> int:
    """Scheduled gate-to-gate minutes for a nonstop flight of `distance_km`, rounded to 5 minutes."""
    raw = FIXED_MIN + distance_km / CRUISE_KMH * 60
    return max(ROUND_TO_MIN, ROUND_TO_MIN * round(raw / ROUND_TO_MIN))


def route_km(origin: str, destination: str) -> float:
    """Great-circle km between two seeded airports by IATA code (KeyError for an unknown code)."""
    a, b = BY_CODE[origin], BY_CODE[destination]
    return great_circle_km(a.lat, a.lon, b.lat, b.lon)
