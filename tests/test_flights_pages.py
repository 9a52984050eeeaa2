"""What a new user notices in their first hour with the flights app, checked the way they would meet it.

Pure tables first (distance and block time, "+1 day", durations, booking codes: the functions the
seed and the pages use, loaded straight from examples/flights without Django), then the app under
gunicorn over real HTTP: labelled search fields, "+1 day" on overnight arrivals, durations that follow
the distance, a confirmation after booking, and `manage.py demo_password`.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from types import ModuleType

import httpx
import pytest

from tests.flights_support import (
    DEMO_PASSWORD,
    FLIGHTS_DIR,
    AppGroup,
    AppServer,
    app_group,
    csrf_token,
    login,
    manage,
    register,
    whoami,
)

PASSWORD = "pleasant-pages-" + uuid.uuid4().hex[:8]


def _load(name: str) -> ModuleType:
    """Import airline/<name>.py by path: these modules are Django-free on purpose, so no settings."""
    path = FLIGHTS_DIR / "airline" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"flights_airline_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


geo = _load("geo")
labels = _load("labels")


# -- pure tables ------------------------------------------------------------------------------------

# (origin, destination, great-circle km range, block minutes range). The minute ranges are what
# airlines publish (both directions, so winds average out); the km ranges are the known distances.
ROUTES = [
    ("AMS", "LHR", 360, 380, 75, 90),             # 1 h 15 - 1 h 30
    ("HND", "KIX", 420, 440, 70, 90),
    ("SYD", "MEL", 690, 720, 85, 105),
    ("AMS", "LIS", 1830, 1860, 165, 190),         # ~2 h 50 - 3 h 05
    ("JFK", "LAX", 3950, 4000, 320, 365),         # 5 h 20 - 6 h 05
    ("LHR", "JFK", 5520, 5570, 420, 480),         # 7 h - 8 h
    ("LHR", "SIN", 10850, 10910, 760, 840),       # 12 h 40 - 14 h
    ("SYD", "LHR", 16950, 17050, 1200, 1320),     # no nonstop flies it; 20 h+ if one did
]


@pytest.mark.parametrize(("origin", "dest", "km_lo", "km_hi", "min_lo", "min_hi"), ROUTES,
                         ids=[f"{o}-{d}" for o, d, *_ in ROUTES])
def test_block_time_follows_the_great_circle_distance(origin: str, dest: str, km_lo: int, km_hi: int,
                                                      min_lo: int, min_hi: int) -> None:
    km = geo.route_km(origin, dest)
    assert km_lo <= km <= km_hi
    assert geo.route_km(dest, origin) == pytest.approx(km)
    minutes = geo.block_minutes(km)
    assert min_lo <= minutes <= min_hi, f"{origin}-{dest}: {labels.duration_label(minutes)}"
    assert minutes % 5 == 0


@pytest.mark.parametrize(("km", "minutes"), [
    (0, 50),          # taxi out and in, climb and descent: no flight is shorter than that
    (100, 55),        # 57.2 -> 55
    (415, 80),        # exactly 80
    (830, 110),       # one hour of cruise
    (8300, 650),      # ten
])
def test_block_minutes_rounds_to_five(km: float, minutes: int) -> None:
    assert geo.block_minutes(km) == minutes


def test_every_seeded_airport_has_coordinates_and_lisbon_is_one() -> None:
    codes = [a.code for a in geo.AIRPORTS]
    assert len(codes) == len(set(codes)) and "LIS" in codes
    for a in geo.AIRPORTS:
        assert re.fullmatch(r"[A-Z]{3}", a.code) and re.fullmatch(r"[A-Z]{2}", a.country)
        assert -90 <= a.lat <= 90 and -180 <= a.lon <= 180, a
    # Same-country airports are near each other (a swapped sign would throw one across the world).
    for a in geo.AIRPORTS:
        for b in geo.AIRPORTS:
            if a.country == b.country:
                assert geo.route_km(a.code, b.code) < 4700, (a.code, b.code)


UTC = dt.UTC
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


@pytest.mark.parametrize(("departs", "arrives", "days", "label"), [
    (dt.datetime(2026, 5, 1, 8, 0, tzinfo=UTC), dt.datetime(2026, 5, 1, 9, 15, tzinfo=UTC), 0, ""),
    (dt.datetime(2026, 5, 1, 22, 0, tzinfo=UTC), dt.datetime(2026, 5, 2, 6, 30, tzinfo=UTC), 1, "+1 day"),
    (dt.datetime(2026, 5, 1, 23, 55, tzinfo=UTC), dt.datetime(2026, 5, 2, 0, 5, tzinfo=UTC), 1, "+1 day"),
    (dt.datetime(2026, 5, 1, 20, 0, tzinfo=UTC), dt.datetime(2026, 5, 3, 1, 0, tzinfo=UTC), 2, "+2 days"),
    (dt.datetime(2026, 12, 31, 18, 0, tzinfo=UTC), dt.datetime(2027, 1, 1, 9, 0, tzinfo=UTC), 1, "+1 day"),
    # The pages print UTC: 01:00+02:00 is 23:00 UTC the day before, so this one does not cross midnight.
    (dt.datetime(2026, 5, 1, 20, 0, tzinfo=UTC), dt.datetime(2026, 5, 2, 1, 0, tzinfo=PLUS_TWO), 0, ""),
    (dt.datetime(2026, 5, 1, 22, 0), dt.datetime(2026, 5, 2, 6, 0), 1, "+1 day"),   # naive = UTC
])
def test_arrival_day_offset(departs: dt.datetime, arrives: dt.datetime, days: int, label: str) -> None:
    assert labels.arrival_day_offset(departs, arrives) == days
    assert labels.day_offset_label(days) == label


@pytest.mark.parametrize(("minutes", "text"), [(5, "5 min"), (55, "55 min"), (60, "1 h 00"),
                                               (75, "1 h 15"), (1280, "21 h 20")])
def test_duration_label(minutes: int, text: str) -> None:
    assert labels.duration_label(minutes) == text


def test_booking_codes_are_short_unambiguous_and_distinct() -> None:
    codes = [labels.booking_code(pk) for pk in range(1, 50_001)]
    assert len(set(codes)) == len(codes)
    assert all(len(c) == 6 and set(c) <= set(labels.CODE_ALPHABET) for c in codes)
    assert not set(labels.CODE_ALPHABET) & set("0O1I")
    assert labels.booking_code(7) == labels.booking_code(7)  # derived, so the same on every page


# -- over HTTP --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group() -> Iterator[AppGroup]:
    with app_group() as g:
        g.start(1, workers=2)
        yield g


@pytest.fixture(scope="module")
def server(group: AppGroup) -> AppServer:
    return group.servers[0]


@pytest.fixture
def anon(server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def user(server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert register(c, "p" + uuid.uuid4().hex[:10], PASSWORD).status_code == 302
        yield c


class FormFields(HTMLParser):
    """The controls and labels inside <form id="filters">, as a browser would associate them."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.controls: list[dict[str, str]] = []
        self.labels: dict[str, str] = {}   # for= -> visible text
        self._label_for: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id") == "filters":
            self.inside = True
        elif self.inside and tag in {"input", "select"} and a.get("type") not in {"hidden", "submit"}:
            self.controls.append(a)
        elif self.inside and tag == "label":
            self._label_for = a.get("for", "")
            self.labels[self._label_for] = ""

    def handle_data(self, data: str) -> None:
        if self._label_for is not None:
            self.labels[self._label_for] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_for = None
        elif tag == "form":
            self.inside = False


def all_flights(client: httpx.Client) -> list[dict[str, str]]:
    flights, page = [], 1
    while page:
        body = client.get("/api/flights", params={"page_size": 100, "page": page}).json()
        flights += body["results"]
        page = body["next_page"]
    return flights


def minutes_between(f: dict[str, str]) -> int:
    delta = dt.datetime.fromisoformat(f["arrives_at"]) - dt.datetime.fromisoformat(f["departs_at"])
    return int(delta.total_seconds() // 60)


def day_offset(f: dict[str, str]) -> int:
    return labels.arrival_day_offset(dt.datetime.fromisoformat(f["departs_at"]),
                                     dt.datetime.fromisoformat(f["arrives_at"]))


@pytest.mark.slow
def test_search_fields_have_visible_labels_and_unclipped_placeholders(anon: httpx.Client) -> None:
    page = anon.get("/")
    fields = FormFields()
    fields.feed(page.text)
    names = {c["name"] for c in fields.controls}
    assert {"q", "origin", "destination", "date", "kind", "max_price", "sort"} <= names
    css_path = re.search(r'href="(/static/airline/site\.[0-9a-f]{12}\.css)"', page.text)
    assert css_path
    css = anon.get(css_path.group(1)).text
    for c in fields.controls:
        assert c.get("id") and fields.labels.get(c["id"], "").strip(), f"{c['name']} has no visible label"
        placeholder = c.get("placeholder", "")
        if not placeholder:
            continue
        if c.get("type", "text") in {"text", "search"}:
            # size is in characters: the box holds the whole placeholder with a little room.
            assert int(c.get("size", "20")) >= len(placeholder) + 2, (c["name"], placeholder)
        else:   # number inputs ignore size: the stylesheet gives them a width in characters
            width = re.search(r'\.filters input\[type="number"\]\s*\{\s*width:\s*(\d+)ch', css)
            assert width and int(width.group(1)) >= len(placeholder) + 3, (c["name"], placeholder)


@pytest.mark.slow
def test_seeded_flight_durations_follow_the_distance(anon: httpx.Client) -> None:
    flights = all_flights(anon)
    assert len(flights) == 400
    for f in flights:
        expected = geo.block_minutes(geo.route_km(f["origin"], f["destination"]))
        assert minutes_between(f) == expected, f
    longest = max(flights, key=minutes_between)
    assert minutes_between(longest) > 15 * 60  # the seed keeps long-haul routes, at long-haul durations


@pytest.mark.slow
def test_overnight_arrival_says_plus_one_day_on_the_list_and_the_flight_page(anon: httpx.Client) -> None:
    flights = all_flights(anon)
    overnight = next(f for f in flights if day_offset(f) == 1)
    same_day = next(f for f in flights if day_offset(f) == 0)
    for f, mark in ((overnight, "+1 day"), (same_day, "")):
        page = anon.get(f"/flights/{f['ref']}/").text
        arrives = re.search(r'<dd id="arrives">(.*?)</dd>', page, re.S)
        assert arrives and (mark in arrives.group(1) if mark else "day" not in arrives.group(1)), f
        assert f'<dd id="duration">{labels.duration_label(minutes_between(f))}</dd>' in page

        listing = anon.get("/", params={"origin": f["origin"], "destination": f["destination"],
                                        "date": f["departs_at"][:10]}).text
        row = re.search(rf'<tr><td><a href="/flights/{f["ref"]}/">.*?</tr>', listing, re.S)
        assert row, f"{f['ref']} not on its own search page"
        cell = re.search(r'<td class="arrives">(.*?)</td>', row.group(0), re.S)
        assert cell and (mark in cell.group(1) if mark else "day" not in cell.group(1)), f


@pytest.mark.slow
def test_booking_confirms_seat_flight_and_code_after_the_redirect(user: httpx.Client) -> None:
    flight = user.get("/api/flights", params={"kind": "domestic", "page": 2}).json()["results"][5]
    page = user.get(f"/flights/{flight['ref']}/")
    r = user.post(f"/flights/{flight['ref']}/book",
                  data={"full_name": "Grace Hopper", "csrfmiddlewaretoken": csrf_token(page.text)})
    assert r.status_code == 302 and r.headers["location"] == "/bookings/"   # POST-redirect-GET

    mine = user.get("/bookings/").text
    notice = re.search(r'<p class="notice success">(Booked: seat (\w+) on (\w+) .*? '
                       r'Confirmation code ([A-Z0-9]{6})\.)</p>', mine)
    assert notice, "no confirmation after booking"
    _, seat, number, code = notice.groups()
    assert number == flight["number"]
    assert f"({flight['origin']} to {flight['destination']}," in notice.group(1)
    row = re.search(rf'<td class="passenger">Grace Hopper</td>.*?<td>{seat}</td><td class="code">{code}</td>',
                    mine, re.S)
    assert row, "the booking's row does not carry the code the notice gave"
    again = user.get("/bookings/").text
    assert "Booked:" not in again and code in again   # shown once; the code stays in the table


@pytest.mark.slow
def test_demo_password_sets_the_password_demo_users_log_in_with(group: AppGroup, server: AppServer) -> None:
    def hashes() -> dict[str, str]:
        db = sqlite3.connect(group.db_path, timeout=20)
        try:
            return dict(db.execute("SELECT username, password FROM auth_user WHERE username LIKE 'user%'"))
        finally:
            db.close()

    def client() -> httpx.Client:
        return httpx.Client(base_url=server.url, timeout=30)

    with client() as c:   # the seed used FLIGHTS_DEMO_PASSWORD (the harness sets it)
        assert login(c, "user1", DEMO_PASSWORD).status_code == 302

    new = "changed-" + uuid.uuid4().hex[:10]
    env = dict(group.env, FLIGHTS_DEMO_PASSWORD=new)
    res = manage(env, "demo_password")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "demo users user1..user5: password from FLIGHTS_DEMO_PASSWORD\n"
    assert new not in res.stdout + res.stderr
    first = hashes()
    assert len(set(first.values())) == 1 and len(first) == 5   # one hash, every demo user

    with client() as c:
        assert login(c, "user3", DEMO_PASSWORD).status_code == 401
        assert login(c, "user3", new).status_code == 302 and whoami(c)[0] == "user3"
        # Idempotent: the same password again changes no hash, so this session stays logged in.
        again = manage(env, "demo_password")
        assert again.returncode == 0 and again.stdout == res.stdout
        assert hashes() == first and whoami(c)[0] == "user3"

    unset = {k: v for k, v in group.env.items() if k != "FLIGHTS_DEMO_PASSWORD"}
    nothing = manage(unset, "demo_password")
    assert nothing.returncode == 0 and "nothing changed" in nothing.stdout
    assert hashes() == first

    more = manage(env, "seed", "--flights", "0", "--users", "7", "--bookings", "0")
    assert more.returncode == 0, more.stderr
    assert "demo users user6..user7: password from FLIGHTS_DEMO_PASSWORD" in more.stdout
    assert new not in more.stdout + more.stderr
    with client() as c:
        assert login(c, "user7", new).status_code == 302
