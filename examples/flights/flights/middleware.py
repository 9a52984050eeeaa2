"""Two small middlewares: which server answered, and a Content-Security-Policy without inline scripts.

Why X-Served-By-App: behind a balancer the user cannot tell which of N servers answered; the header
(and the page footer) makes balancing, affinity and failover visible, and the session tests read it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

# 'self' only, and no 'unsafe-inline' for scripts: an injected <script> or onclick= does not run
# even if some template forgot to escape. frame-ancestors 'none' replaces X-Frame-Options in CSP-aware
# browsers; form-action 'self' stops a injected <form> from posting credentials elsewhere.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def served_by(request: HttpRequest) -> str:
    """The name of this server: FLIGHTS_SERVER_NAME, else the address gunicorn listens on.

    The page shows this (stable per server, so a page's ETag does not change from one worker
    process to the next); the header adds the worker's pid.
    """
    if settings.SERVER_NAME_OVERRIDE:
        return settings.SERVER_NAME_OVERRIDE
    return f"{request.META.get('SERVER_NAME', '?')}:{request.META.get('SERVER_PORT', '?')}"


class ServedByMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.served_by = served_by(request)  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Served-By-App"] = f"{request.served_by} pid {os.getpid()}"  # type: ignore[attr-defined]
        return response


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", CSP)
        return response
