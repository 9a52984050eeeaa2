"""taxiway: run a web application on many servers, scale it with its load, keep it secure."""

from taxiway.compiled import select

__version__ = "0.1.0"

# Decided before any compiled module can be imported: the mypyc build when it matches the sources,
# else the sources (see compiled.py). Shown by `taxiway lb` and /status as "hot_path".
BUILD = select()
