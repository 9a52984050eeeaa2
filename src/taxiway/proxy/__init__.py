"""The HTTP/1.1 reverse proxy: listener, router, upstream pool (the I/O shell around balancing/)."""
