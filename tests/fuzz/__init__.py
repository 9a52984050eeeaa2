"""Fuzz targets (atheris) for the proxy's request path; see tests/fuzz/README.md."""
