"""taxiway: run a web application on many servers, scale it with its load, keep it secure."""

__version__ = "0.1.0"
