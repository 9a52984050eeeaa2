"""URL map. Every state change is a POST route; the rest are GET-only views."""

from airline import api, static_files, views
from django.urls import path, re_path

urlpatterns = [
    path("", views.flight_list, name="flight-list"),
    path("flights/<str:ref>/", views.flight_detail, name="flight-detail"),
    path("flights/<str:ref>/book", views.book, name="book"),
    path("bookings/", views.my_bookings, name="my-bookings"),
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("register/", views.register, name="register"),
    path("api/flights", api.flights, name="api-flights"),
    path("api/flights/<str:ref>", api.flight, name="api-flight"),
    path("api/me", api.me, name="api-me"),
    path("healthz", api.healthz, name="healthz"),
    re_path(r"^static/(?P<path>.+)$", static_files.serve, name="static"),
]
