"""`manage.py prepare`: everything a fresh checkout needs before serving (idempotent).

migrate (tables), createcachetable (the embedded database cache), collectstatic (hashed static
names + staticfiles.json manifest that the pages and the static view rely on).
"""

from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Migrate, create the cache table and collect static files (safe to run again)."

    def handle(self, *args: object, **options: object) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("createcachetable", verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        self.stdout.write("prepared: database migrated, cache table created, static files collected")
