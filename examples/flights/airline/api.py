"""JSON API (read-only, GET): /api/flights, /api/flights/<ref>, /api/me; and /healthz.

JSON is escaped by construction (json.dumps of plain values, served as application/json with
nosniff), so a stored `<script>` in a name is data, not markup.
"""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_safe

from airline import availability
from airline.forms import SearchForm
from airline.models import flight_by_ref
from airline.search import search


@require_GET
def flights(request: HttpRequest) -> JsonResponse:
    form = SearchForm(request.GET)
    size = request.GET.get("page_size", "25")
    query = form.to_query(page_size=int(size) if size.isdigit() else 25)
    rows, has_next = search(query)
    return JsonResponse({
        "results": [{"ref": r.ref, "number": r.number, "kind": r.kind, "origin": r.origin,
                     "destination": r.destination, "departs_at": r.departs_at.isoformat(),
                     "arrives_at": r.arrives_at.isoformat(), "price": r.price, "url": f"/api/flights/{r.ref}"}
                    for r in rows],
        "page": query.page,
        "next_page": query.page + 1 if has_next else None,
    })


@require_GET
def flight(request: HttpRequest, ref: str) -> JsonResponse:
    f = flight_by_ref(ref)
    if f is None:
        return JsonResponse({"error": "no such flight"}, status=404)
    return JsonResponse({
        "ref": f.ref, "number": f.number, "kind": f.kind,
        "origin": {"code": f.origin.code, "city": f.origin.city, "country": f.origin.country},
        "destination": {"code": f.destination.code, "city": f.destination.city,
                        "country": f.destination.country},
        "departs_at": f.departs_at.isoformat(), "arrives_at": f.arrives_at.isoformat(),
        "aircraft": f.aircraft, "capacity": f.capacity, "price": f.price,
        "seats_left": availability.seats_left(f),
    })


@require_GET
def me(request: HttpRequest) -> JsonResponse:
    """Who the session says you are, and which server answered: the session tests' probe."""
    user = request.user.get_username() if request.user.is_authenticated else None
    resp = JsonResponse({"user": user, "served_by": getattr(request, "served_by", "")})
    resp["Cache-Control"] = "private, no-store"
    return resp


@require_safe  # GET or HEAD: some checkers probe with HEAD
def healthz(request: HttpRequest) -> HttpResponse:
    """Readiness: cheap, but proves the database answers (a server without its DB is not ready)."""
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
    except Exception as exc:  # any driver error means "not ready"; the reason goes to the body
        return HttpResponse(f"db unavailable: {type(exc).__name__}\n", status=503, content_type="text/plain")
    resp = HttpResponse("ok\n", content_type="text/plain")
    resp["Cache-Control"] = "no-store"
    return resp
