"""Edge security: TLS, rate limiting, API keys, request hygiene."""
