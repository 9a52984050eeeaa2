"""`manage.py demo_password`: give every demo user (user1..userN) the password in FLIGHTS_DEMO_PASSWORD.

Why a command of its own: `seed` creates users once (and `seed --if-empty` does nothing on later
starts), so a password chosen after the first seed would never reach the database. This runs at
every demo start, so it must be cheap and must not disturb anyone:

- one hash check per distinct stored hash (the seed gives all demo users the same one; at most
  MAX_CHECKS of them), and users whose hash already verifies are left alone: re-hashing with a new
  salt would change the session auth hash and log every demo user out at each restart;
- at most one make_password (Argon2 is slow on purpose) and one bulk UPDATE for the rest.

It never prints the password (demo start-up output ends up in terminals and logs).
"""

from __future__ import annotations

import os
from collections import Counter

from django.contrib.auth.hashers import check_password, make_password
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand

from airline.management.commands.seed import DEMO_USERNAME_REGEX, user_range

ENV = "FLIGHTS_DEMO_PASSWORD"
MAX_CHECKS = 8


class Command(BaseCommand):
    help = f"Set the password from ${ENV} on all demo users user1..userN (nothing to do when unset)."

    def handle(self, *args: object, **options: object) -> None:
        password = os.environ.get(ENV, "")
        if not password:
            self.stdout.write(f"demo_password: {ENV} is not set, nothing changed")
            return
        demo = User.objects.filter(username__regex=DEMO_USERNAME_REGEX)
        rows = list(demo.values_list("username", "password"))
        if not rows:
            self.stdout.write("demo_password: no demo users yet (manage.py seed makes them), nothing changed")
            return
        # Most common hashes first, a bounded number of checks: a stranger state (many users with
        # their own hashes) costs one re-hash for the rest, not minutes of Argon2.
        hashes = Counter(stored for _, stored in rows).most_common(MAX_CHECKS)
        current = {stored for stored, _ in hashes if check_password(password, stored)}
        stale = demo.exclude(password__in=current) if current else demo
        if stale.exists():
            stale.update(password=make_password(password))
        names = user_range([int(username[len("user"):]) for username, _ in rows])
        self.stdout.write(f"demo users {names}: password from {ENV}")
