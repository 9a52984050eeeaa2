"""HTML pages: flight list, flight detail, booking (POST), my bookings, login/logout/register.

Rules of this module:
1. No state change on GET: booking, logout and register/login submissions are POST-only
   (`require_POST` / method checks), and CSRF-protected by CsrfViewMiddleware. A booking answers
   with a redirect to "My bookings" (POST-redirect-GET), which shows its confirmation once.
2. Output is escaped by Django templates (autoescape on; no `|safe`, no `mark_safe` on user data).
3. The anonymous flight list is the same page for everyone, so it is cached whole (per-view cache);
   logged-in users get a fresh page (it names them and carries their CSRF token).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_required
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import cache_page
from django.views.decorators.http import condition, require_GET, require_http_methods, require_POST

from airline import availability, throttle
from airline.forms import BookingForm, RegisterForm, SearchForm
from airline.models import BOOKING_FIELD, Booking, FlightBase, Kind, Passenger, flight_by_ref
from airline.search import search

View = Callable[..., HttpResponse]


def served_by_context(request: HttpRequest) -> dict[str, str]:
    """Template context processor: the page footer says which server rendered it."""
    return {"served_by": getattr(request, "served_by", "")}


def cache_for_anonymous(timeout_s: int) -> Callable[[View], View]:
    """Per-view cache for anonymous users only (FLIGHTS_CACHES contains "view").

    The cached copy lives in the shared cache, so all servers serve the same bytes and therefore
    the same ETag: a browser's If-None-Match gets a 304 whichever server answers.
    """
    def decorate(view: View) -> View:
        cached = cache_page(timeout_s, key_prefix="flightlist")(view)

        def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            if "view" in settings.FLIGHTS_CACHES and not request.user.is_authenticated:
                return cached(request, *args, **kwargs)
            return view(request, *args, **kwargs)
        wrapper.__name__ = view.__name__
        wrapper.__doc__ = view.__doc__
        return wrapper
    return decorate


@require_GET
@cache_for_anonymous(settings.FLIGHT_LIST_CACHE_S)
def flight_list(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET)
    query = form.to_query()
    rows, has_next = search(query)
    params = request.GET.copy()
    params.pop("page", None)
    return render(request, "airline/flight_list.html", {
        "form": form, "query": query, "rows": rows, "has_next": has_next,
        "next_page": query.page + 1, "prev_page": query.page - 1, "params": params.urlencode(),
    })


def _flight_or_404(ref: str) -> FlightBase:
    flight = flight_by_ref(ref)
    if flight is None:
        raise Http404("no such flight")
    return flight


def route_summary(flight: FlightBase) -> dict[str, object]:
    """The expensive part of the flight page: statistics over every flight on the same route.
    Rendered inside a template fragment cache (FLIGHTS_CACHES contains "fragment")."""
    from django.db.models import Avg, Count, Min

    model = type(flight)
    same_route = model.objects.filter(origin_id=flight.origin_id, destination_id=flight.destination_id)
    stats = same_route.aggregate(n=Count("id"), cheapest=Min("price_cents"), average=Avg("price_cents"))
    upcoming = list(same_route.filter(departs_at__gt=flight.departs_at).order_by("departs_at")[:5])
    booked = Booking.objects.filter(**{BOOKING_FIELD[flight.KIND] + "__in": same_route}).count()
    return {"n": stats["n"], "cheapest": (stats["cheapest"] or 0) / 100,
            "average": (stats["average"] or 0) / 100, "upcoming": upcoming, "booked": booked}


class LazyRouteSummary:
    """Computed only if the template fragment is not in the cache (the template touches it inside
    `{% cache %}`), which is the whole point of the fragment cache."""

    def __init__(self, flight: FlightBase) -> None:
        self.flight = flight
        self._value: dict[str, object] | None = None

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._value is None:
            self._value = route_summary(self.flight)
        return self._value[name]


@functools.cache
def _templates_digest() -> str:
    """Hash of this app's templates, read once per process: a deploy that changes a template
    changes every ETag, so no browser keeps a 304-validated copy of the old markup."""
    h = hashlib.sha256()
    for p in sorted((Path(__file__).parent / "templates").rglob("*.html")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def flight_etag(request: HttpRequest, ref: str) -> str | None:
    """ETag of the flight page from the data it shows, not from its bytes, so every server (each
    printing its own name in the footer) gives the same ETag and a 304 holds across servers.
    Includes the seat count (changes on booking) and the viewer (the page names them)."""
    flight = flight_by_ref(ref)
    if flight is None:
        return None
    viewer = request.user.pk if request.user.is_authenticated else 0
    return f"{flight.ref}-{availability.seats_left(flight)}-{viewer}-{_templates_digest()}"


@require_GET
@condition(etag_func=flight_etag)
def flight_detail(request: HttpRequest, ref: str) -> HttpResponse:
    flight = _flight_or_404(ref)
    form = BookingForm(international=flight.KIND is Kind.INTERNATIONAL)
    return render(request, "airline/flight_detail.html", {
        "flight": flight, "seats_left": availability.seats_left(flight), "form": form,
        "route": LazyRouteSummary(flight),
        "fragment_cache_s": settings.ROUTE_FRAGMENT_CACHE_S if "fragment" in settings.FLIGHTS_CACHES else 0,
    })


def _seat_names(capacity: int) -> list[str]:
    return [f"{i // 6 + 1}{'ABCDEF'[i % 6]}" for i in range(capacity)]


def confirmation(booking: Booking, flight: FlightBase) -> str:
    """The notice a user sees after booking: what they booked and the code to quote."""
    return (f"Booked: seat {booking.seat} on {flight.number} ({flight.origin.code} to "
            f"{flight.destination.code}, departs {flight.departs_at:%Y-%m-%d %H:%M} UTC). "
            f"Confirmation code {booking.code}.")


@require_POST
@login_required
def book(request: HttpRequest, ref: str) -> HttpResponse:
    flight = _flight_or_404(ref)
    form = BookingForm(request.POST, international=flight.KIND is Kind.INTERNATIONAL)
    error = ""
    booking: Booking | None = None
    if form.is_valid():
        try:
            with transaction.atomic():
                # PostgreSQL: lock the flight row so two bookings cannot both take the last seat.
                # SQLite: transaction_mode=IMMEDIATE already serialises writers.
                locked = type(flight).objects.select_for_update().get(pk=flight.pk)
                taken = availability.taken_seats(locked)
                free = [s for s in _seat_names(locked.capacity) if s not in taken]
                seat = form.cleaned_data["seat"] or (free[0] if free else "")
                if not free:
                    error = "This flight is full."
                elif seat not in free:
                    error = f"Seat {seat} is not available."
                else:
                    passenger = Passenger.objects.create(
                        account=request.user, full_name=form.cleaned_data["full_name"],
                        passport_number=form.cleaned_data["passport_number"])
                    booking = Booking.objects.create(passenger=passenger, seat=seat,
                                                     **{BOOKING_FIELD[flight.KIND]: locked})
                    availability.booked(locked)
        except IntegrityError:
            error = "That seat was just taken; please choose another."
            booking = None
    if booking is not None:
        # Only after the commit: a booking that rolled back must not leave a "Booked" notice behind.
        # POST-redirect-GET: reloading the bookings page cannot book twice.
        messages.success(request, confirmation(booking, flight))
        return redirect("my-bookings")
    return render(request, "airline/flight_detail.html", {
        "flight": flight, "seats_left": availability.seats_left(flight), "form": form, "error": error,
        "route": LazyRouteSummary(flight), "fragment_cache_s": 0,
    }, status=400 if not error else 409)


@require_GET
@login_required
def my_bookings(request: HttpRequest) -> HttpResponse:
    bookings = (Booking.objects.filter(passenger__account=request.user)
                .select_related("passenger", "domestic_flight__origin", "domestic_flight__destination",
                                "international_flight__origin", "international_flight__destination"))
    # The notices are read here only (not in base.html): the anonymous list page is cached whole,
    # and a page that reads them must never be one that is cached.
    return render(request, "airline/my_bookings.html",
                  {"bookings": bookings, "notices": messages.get_messages(request)})


def _safe_next(request: HttpRequest) -> str:
    nxt = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()},
                                       require_https=request.is_secure()):
        return nxt
    return "/"


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    error = ""
    username = ""
    if request.method == "POST":
        username = request.POST.get("username", "")[:150]
        password = request.POST.get("password", "")[:4096]
        address = throttle.client_address(request)
        if throttle.is_locked(username, address):
            # Checked before authenticate(): a locked-out guess costs no Argon2 hash and says nothing
            # about whether the password was right.
            resp = render(request, "airline/login.html",
                          {"error": "Too many failed logins. Try again in 15 minutes.", "username": username},
                          status=429)
            resp["Retry-After"] = str(settings.LOGIN_LIMIT_WINDOW_S)
            return resp
        user = authenticate(request, username=username, password=password)
        if user is not None:
            throttle.record_success(username, address)
            login(request, user)
            return redirect(_safe_next(request))
        throttle.record_failure(username, address)
        error = "Wrong username or password."
    return render(request, "airline/login.html",
                  {"error": error, "username": username, "next": _safe_next(request)},
                  status=401 if error else 200)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("flight-list")


@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    form = RegisterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("flight-list")
    return render(request, "airline/register.html", {"form": form}, status=400 if form.errors else 200)
