"""The request shapes of the realistic benchmark matrix (what browsers and API clients send).

Each is the exact bytes a client writes, so the in-process count (`hotpath_inproc.py
--request NAME`) and the wrk runs (`wrk.lua`) send the same thing.
- minimal: wrk's own request, one Host header (what every throughput figure used to be);
- browser: a Chromium 156 top-level page request (15 header fields, cookies, ~800 bytes), as its
  network inspector shows it for a first visit to a page with a session;
- api: a JSON API POST with a 2 KB body and a bearer token;
- static: a stylesheet request with the conditional headers a browser sends for a cached copy.
"""

from __future__ import annotations

import json

_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
       "Chrome/156.0.0.0 Safari/537.36")
_COOKIE = ("csrftoken=q0G1cYq6n3xW8Jt2bV5kz9LmR4pTfHsA; sessionid=8v2k1m9x0c7b6n5z4a3s2d1f0g9h8j7k; "
           "theme=dark; _ga=GA1.1.1234567890.1764614400")

def _booking(passengers: int) -> bytes:
    return json.dumps({"flight": "LIS-AMS", "date": "2026-12-24", "passengers": [
        {"name": f"Passenger {i}", "seat": f"{10 + i}C", "bags": i % 3, "meal": "vegetarian"}
        for i in range(passengers)]}, separators=(",", ":")).encode()


BODY_2K = next(_booking(n) for n in range(1, 100) if len(_booking(n)) >= 2000)   # ~2 KB of JSON


def _head(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


SHAPES: dict[str, bytes] = {
    "minimal": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "browser": _head([
        "GET /flights/search?from=LIS&to=AMS&date=2026-12-24 HTTP/1.1",
        "Host: flights.example.com",
        "Connection: keep-alive",
        'sec-ch-ua: "Chromium";v="156", "Not_A Brand";v="24"',
        "sec-ch-ua-mobile: ?0",
        'sec-ch-ua-platform: "Linux"',
        "Upgrade-Insecure-Requests: 1",
        f"User-Agent: {_UA}",
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
        "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
        "Sec-Fetch-Site: same-origin",
        "Sec-Fetch-Mode: navigate",
        "Sec-Fetch-User: ?1",
        "Sec-Fetch-Dest: document",
        "Referer: https://flights.example.com/",
        "Accept-Encoding: gzip, deflate, br, zstd",
        "Accept-Language: en-GB,en;q=0.9,pt;q=0.8",
        f"Cookie: {_COOKIE}",
    ]),
    "api": _head([
        "POST /api/bookings HTTP/1.1",
        "Host: api.flights.example.com",
        "User-Agent: flights-mobile/4.2.0 (Android 15; Pixel 9)",
        "Accept: application/json",
        "Content-Type: application/json",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjoxNzY0NjE0NDAwfQ."
        "mH3v0cWl5a7oQ2kT9yXb1nR8sJ4fD6gE0pL2uZ3wA5c",
        "Accept-Encoding: gzip",
        f"Content-Length: {len(BODY_2K)}",
    ]) + BODY_2K,
    "static": _head([
        "GET /static/css/site.4f9a2c1e.css HTTP/1.1",
        "Host: flights.example.com",
        "Connection: keep-alive",
        f"User-Agent: {_UA}",
        "Accept: text/css,*/*;q=0.1",
        "Sec-Fetch-Site: same-origin",
        "Sec-Fetch-Mode: no-cors",
        "Sec-Fetch-Dest: style",
        "Referer: https://flights.example.com/flights/search",
        "Accept-Encoding: gzip, deflate, br, zstd",
        "Accept-Language: en-GB,en;q=0.9",
        f"Cookie: {_COOKIE}",
        'If-None-Match: "6750a1b2-1f4a"',
        "If-Modified-Since: Wed, 25 Nov 2026 10:00:00 GMT",
    ]),
}
