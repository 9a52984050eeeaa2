"""Serves collectstatic's output (a tiny stand-in for whitenoise, which is not a dependency).

Hashed names (`site.3f2a9c1b7e4d.css`, listed in staticfiles.json) never change content, so they
are sent with `Cache-Control: max-age=31536000, immutable`: browsers do not even revalidate. A
new deploy changes the hash and therefore the URL in the HTML. Unhashed names get a short max-age.
"""

from __future__ import annotations

import json
import mimetypes
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.utils._os import safe_join
from django.views.decorators.http import require_safe

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=60"


@lru_cache(maxsize=1)
def _hashed_names() -> frozenset[str]:
    manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
    try:
        return frozenset(json.loads(manifest.read_text())["paths"].values())
    except (OSError, ValueError, KeyError):
        return frozenset()


@require_safe
def serve(request: HttpRequest, path: str) -> HttpResponse:
    try:
        full = Path(safe_join(settings.STATIC_ROOT, path))  # refuses ../ escapes
    except Exception as exc:  # SuspiciousFileOperation and friends
        raise Http404("not found") from exc
    if not full.is_file():
        raise Http404("not found")
    ctype, encoding = mimetypes.guess_type(str(full))
    resp = FileResponse(full.open("rb"), content_type=ctype or "application/octet-stream")
    if encoding:
        resp["Content-Encoding"] = encoding
    resp["Cache-Control"] = IMMUTABLE if path in _hashed_names() else SHORT
    return resp
