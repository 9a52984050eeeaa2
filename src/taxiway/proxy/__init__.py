"""The HTTP/1.1 reverse proxy: listener, router, upstream pool (the I/O shell around balancing/)."""

from taxiway.proxy.hotpath import select

# Set before any hot-path module is imported: compiled when it matches the sources, else sources.
BUILD = select()
