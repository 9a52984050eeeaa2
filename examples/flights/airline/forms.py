"""Forms: every user-supplied value is validated here and escaped by the templates on output."""

from __future__ import annotations

import datetime as dt
import re

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User

from airline.models import Kind
from airline.search import SORTS, Query

_IATA = re.compile(r"^[A-Za-z]{3}$")
_SEAT = re.compile(r"^[1-9][0-9]?[A-F]$")


class SearchForm(forms.Form):
    """The flight list's GET filters. Invalid values are dropped, not errors: a search page should
    still show flights for `?date=garbage`."""

    q = forms.CharField(required=False, max_length=200)
    origin = forms.CharField(required=False, max_length=3)
    destination = forms.CharField(required=False, max_length=3)
    date = forms.DateField(required=False)
    kind = forms.ChoiceField(required=False, choices=[("", "any"), ("domestic", "domestic"),
                                                      ("international", "international")])
    max_price = forms.IntegerField(required=False, min_value=0, max_value=100000)
    sort = forms.ChoiceField(required=False, choices=[(k, k) for k in SORTS])
    page = forms.IntegerField(required=False, min_value=1, max_value=10000)

    def to_query(self, page_size: int = 25) -> Query:
        self.is_valid()
        d = self.cleaned_data
        kind = {"domestic": Kind.DOMESTIC, "international": Kind.INTERNATIONAL}.get(d.get("kind") or "")
        origin = d.get("origin") or ""
        destination = d.get("destination") or ""
        day = d.get("date")
        return Query(
            text=(d.get("q") or "").strip(),
            origin=origin if _IATA.match(origin) else "",
            destination=destination if _IATA.match(destination) else "",
            day=day if isinstance(day, dt.date) else None,
            kind=kind,
            max_price_cents=d["max_price"] * 100 if d.get("max_price") is not None else None,
            sort=d.get("sort") or "departs",
            page=d.get("page") or 1,
            page_size=page_size,
        )


class BookingForm(forms.Form):
    full_name = forms.CharField(max_length=120, strip=True)
    passport_number = forms.CharField(max_length=20, required=False, strip=True)
    seat = forms.CharField(max_length=3, required=False, strip=True,
                           help_text="e.g. 12C; empty picks the first free seat")

    def __init__(self, *args: object, international: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.international = international

    def clean_seat(self) -> str:
        seat = self.cleaned_data["seat"].upper()
        if seat and not _SEAT.match(seat):
            raise forms.ValidationError("A seat is a row number and a letter A-F, like 12C.")
        return seat

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if self.international and not data.get("passport_number"):
            self.add_error("passport_number", "International flights need a passport number.")
        return data


class RegisterForm(UserCreationForm):
    first_name = forms.CharField(max_length=60, required=False, label="Display name")

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "first_name")
