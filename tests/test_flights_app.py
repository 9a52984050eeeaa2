"""The flights app under gunicorn, over real HTTP: pages, search, booking, the API and its caches."""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.flights_support import AppGroup, AppServer, app_group, csrf_token, register

pytestmark = pytest.mark.slow

PASSWORD = "a-long-enough-pass-" + uuid.uuid4().hex[:8]


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
    """A freshly registered, logged-in user."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = register(c, "u" + uuid.uuid4().hex[:10], PASSWORD)
        assert r.status_code == 302, r.text
        yield c


def cache_keys(group: AppGroup, like: str) -> list[str]:
    db = sqlite3.connect(group.db_path, timeout=20)
    try:
        rows = db.execute("SELECT cache_key FROM flights_cache WHERE cache_key LIKE ?", (like,))
        return [k for (k,) in rows]
    finally:
        db.close()


def taken_seats(group: AppGroup, ref: str) -> set[str]:
    assert ref.startswith("D")
    db = sqlite3.connect(group.db_path, timeout=20)
    try:
        rows = db.execute("SELECT seat FROM airline_booking WHERE domestic_flight_id = ?", (int(ref[1:]),))
        return {seat for (seat,) in rows}
    finally:
        db.close()


def test_health_and_served_by(anon: httpx.Client, server: AppServer) -> None:
    r = anon.get("/healthz")
    assert r.status_code == 200 and r.text == "ok\n"
    page = anon.get("/")
    assert page.headers["X-Served-By-App"].startswith(server.name)
    assert f"127.0.0.1:{server.port}" in page.text  # the footer names the server too


def test_flight_list_search_and_filters(anon: httpx.Client) -> None:
    page = anon.get("/")
    assert page.status_code == 200
    refs = re.findall(r'href="/flights/([DI]\d+)/"', page.text)
    assert len(refs) == 25  # one full page of the 400 seeded flights

    intl = anon.get("/api/flights", params={"kind": "international", "page_size": 100}).json()["results"]
    assert intl and all(f["kind"] == "international" and f["ref"].startswith("I") for f in intl)
    dom = anon.get("/api/flights", params={"kind": "domestic"}).json()["results"]
    assert dom and all(f["ref"].startswith("D") for f in dom)

    first = intl[0]
    by_route = anon.get("/api/flights",
                        params={"origin": first["origin"], "destination": first["destination"]})
    assert all(f["origin"] == first["origin"] and f["destination"] == first["destination"]
               for f in by_route.json()["results"])
    day = first["departs_at"][:10]
    on_day = anon.get("/api/flights", params={"date": day, "page_size": 100}).json()["results"]
    assert first["ref"] in {f["ref"] for f in on_day} and all(f["departs_at"].startswith(day) for f in on_day)

    cheap = anon.get("/api/flights", params={"sort": "price", "max_price": 200}).json()["results"]
    prices = [float(f["price"]) for f in cheap]
    assert prices == sorted(prices) and all(p <= 200 for p in prices)

    page2 = anon.get("/api/flights", params={"page": 2}).json()
    page1 = anon.get("/api/flights").json()
    assert page1["next_page"] == 2
    assert not {f["ref"] for f in page1["results"]} & {f["ref"] for f in page2["results"]}

    by_city = anon.get("/", params={"q": first["origin"]})
    assert first["origin"] in by_city.text


def test_flight_detail_and_api(anon: httpx.Client) -> None:
    ref = anon.get("/api/flights").json()["results"][0]["ref"]
    page = anon.get(f"/flights/{ref}/")
    assert page.status_code == 200 and 'id="seats-left"' in page.text and "This route" in page.text
    detail = anon.get(f"/api/flights/{ref}").json()
    assert detail["ref"] == ref and 0 <= detail["seats_left"] <= detail["capacity"]
    for bad in ("D99999999", "X1", "D", "Dabc", "D1%27%20OR%201=1"):
        assert anon.get(f"/api/flights/{bad}").status_code == 404
        assert anon.get(f"/flights/{bad}/").status_code == 404


def test_booking_updates_availability_and_invalidates_its_cache(user: httpx.Client, group: AppGroup) -> None:
    ref = user.get("/api/flights", params={"kind": "international"}).json()["results"][3]["ref"]
    before = user.get(f"/api/flights/{ref}").json()["seats_left"]
    assert cache_keys(group, f"%:seats:{ref}"), "seat availability was not cached"
    assert user.get(f"/api/flights/{ref}").json()["seats_left"] == before  # served from the cache

    page = user.get(f"/flights/{ref}/")
    r = user.post(f"/flights/{ref}/book", data={"full_name": "Ada Lovelace", "passport_number": "P1234567",
                                                 "csrfmiddlewaretoken": csrf_token(page.text)})
    assert r.status_code == 302 and r.headers["location"] == "/bookings/"
    assert not cache_keys(group, f"%:seats:{ref}"), "the booking did not invalidate the cached count"
    assert user.get(f"/api/flights/{ref}").json()["seats_left"] == before - 1

    mine = user.get("/bookings/")
    assert "Ada Lovelace" in mine.text and ref in mine.text


def test_booking_validation(user: httpx.Client) -> None:
    ref = user.get("/api/flights", params={"kind": "international"}).json()["results"][0]["ref"]
    token = csrf_token(user.get(f"/flights/{ref}/").text)
    no_passport = user.post(f"/flights/{ref}/book", data={"full_name": "X Y", "csrfmiddlewaretoken": token})
    assert no_passport.status_code == 400 and "passport" in no_passport.text
    ok = user.post(f"/flights/{ref}/book", data={"full_name": "A B", "passport_number": "P1", "seat": "1A",
                                                 "csrfmiddlewaretoken": token})
    if ok.status_code == 409:  # a seeded booking already holds 1A: take it for the next assertion
        assert "not available" in ok.text
    again = user.post(f"/flights/{ref}/book", data={"full_name": "C D", "passport_number": "P2", "seat": "1A",
                                                    "csrfmiddlewaretoken": token})
    assert again.status_code == 409 and "Seat 1A is not available" in again.text


def test_anonymous_flight_list_is_served_from_the_per_view_cache(anon: httpx.Client, user: httpx.Client,
                                                                 group: AppGroup) -> None:
    url = "/?kind=domestic&sort=-price"
    first = anon.get(url)
    assert cache_keys(group, "%views.decorators.cache.cache_page.flightlist%"), "list page not cached"
    time.sleep(1.1)
    second = anon.get(url)
    # A cache hit replays the stored response: same Expires, same bytes.
    assert second.headers["Expires"] == first.headers["Expires"] and second.text == first.text
    assert "max-age=30" in first.headers["Cache-Control"]
    # A logged-in user gets a fresh page naming them (never someone else's cached copy).
    mine = user.get(url)
    assert 'id="username"' in mine.text and 'id="username"' not in first.text


def test_route_panel_uses_the_template_fragment_cache(anon: httpx.Client, group: AppGroup) -> None:
    ref = anon.get("/api/flights", params={"page": 3}).json()["results"][0]["ref"]
    anon.get(f"/flights/{ref}/")
    assert cache_keys(group, "%template.cache.route_panel.%")


def test_conditional_get_answers_304(anon: httpx.Client) -> None:
    for url in ("/?kind=international", "/api/flights/D1", "/flights/I2/"):
        r = anon.get(url)
        etag = r.headers["ETag"]
        again = anon.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"", url
        assert again.headers["ETag"] == etag
        changed = anon.get(url, headers={"If-None-Match": '"something-else"'})
        assert changed.status_code == 200 and changed.content


def raw_get(server: AppServer, target: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_hashed_static_files_are_immutable(anon: httpx.Client, server: AppServer) -> None:
    page = anon.get("/").text
    css = re.search(r'href="(/static/airline/site\.[0-9a-f]{12}\.css)"', page)
    js = re.search(r'src="(/static/airline/site\.[0-9a-f]{12}\.js)"', page)
    assert css and js, "pages must link the hashed names"
    for path in (css.group(1), js.group(1)):
        r = anon.get(path)
        assert r.status_code == 200 and r.content
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    plain = anon.get("/static/airline/site.css")
    assert plain.status_code == 200 and "immutable" not in plain.headers["Cache-Control"]
    assert anon.get("/static/nope.css").status_code == 404
    for escape in ("/static/../flights/settings.py", "/static/%2e%2e/flights/settings.py",
                   "/static/..%2f..%2fdb.sqlite3"):
        status, body = raw_get(server, escape)  # raw: an HTTP client would normalise the dots away
        assert status == 404 and b"SECRET_KEY" not in body, escape


def test_state_changes_are_post_only(user: httpx.Client) -> None:
    assert user.get("/logout/").status_code == 405
    assert user.get("/api/me").json()["user"] is not None  # still logged in
    assert user.get("/flights/D1/book").status_code == 405
    r = user.post("/logout/", data={"csrfmiddlewaretoken": csrf_token(user.get("/").text)})
    assert r.status_code == 302 and user.get("/api/me").json()["user"] is None


def test_my_bookings_requires_login(anon: httpx.Client) -> None:
    r = anon.get("/bookings/")
    assert r.status_code == 302 and r.headers["location"].startswith("/login/")


def test_concurrent_bookings_of_one_seat_give_it_to_exactly_one(group: AppGroup, server: AppServer) -> None:
    """8 users press "Book" for the same seat at once (on 2 worker processes): one gets it, the rest
    get 409, and the flight's seat count drops by exactly one."""
    ref = httpx.get(server.url + "/api/flights",
                    params={"kind": "domestic", "page": 4}).json()["results"][0]["ref"]
    clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(8)]
    try:
        tokens = []
        for c in clients:
            assert register(c, "race" + uuid.uuid4().hex[:8], PASSWORD).status_code == 302
            tokens.append(csrf_token(c.get(f"/flights/{ref}/").text))
        free_seat = next(s for s in (f"{row}{letter}" for row in range(1, 40) for letter in "ABCDEF")
                         if s not in taken_seats(group, ref))
        before = clients[0].get(f"/api/flights/{ref}").json()["seats_left"]
        barrier = threading.Barrier(len(clients))

        def book(i: int) -> int:
            barrier.wait()
            return clients[i].post(f"/flights/{ref}/book", data={
                "full_name": f"Racer {i}", "seat": free_seat, "csrfmiddlewaretoken": tokens[i]}).status_code

        with ThreadPoolExecutor(len(clients)) as pool:
            statuses = sorted(pool.map(book, range(len(clients))))
    finally:
        for c in clients:
            c.close()
    assert statuses == [302] + [409] * 7
    assert httpx.get(f"{server.url}/api/flights/{ref}").json()["seats_left"] == before - 1
    assert free_seat in taken_seats(group, ref)
