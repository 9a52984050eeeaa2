from django.apps import AppConfig


class AirlineConfig(AppConfig):
    name = "airline"
    default_auto_field = "django.db.models.BigAutoField"
