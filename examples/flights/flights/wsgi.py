"""WSGI entry point: `gunicorn flights.wsgi -b 127.0.0.1:8001` from examples/flights."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flights.settings")

application = get_wsgi_application()
