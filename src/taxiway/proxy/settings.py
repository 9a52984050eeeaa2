"""`Settings`: the config values the hot path reads, precomputed once per config.

Swapped whole on reload, so a request reads `settings.x` (seconds as floats, bytes as ints, the
two header rewriters built) and never parses a config value. Compiled with the hot path.
"""

from __future__ import annotations

import ipaddress
import math

from taxiway.config import Config
from taxiway.proxy.http1 import RequestRewriter, ResponseRewriter


class Settings:
    """Config values the hot path reads, precomputed (seconds, bytes, rewriters)."""

    def __init__(self, cfg: Config, rewriter: RequestRewriter | None = None) -> None:
        t, lim = cfg.timeouts, cfg.limits
        self.client_header_s = float(t.client_header)
        self.client_body_s = float(t.client_body)
        self.client_idle_s = float(t.client_idle)
        self.upstream_response_s = float(t.upstream_response)
        self.upstream_read_s = float(t.upstream_read)
        self.upstream_idle_s = float(t.upstream_idle)
        self.connect_s = float(t.connect)
        self.max_header_bytes = int(lim.max_header_bytes)
        self.max_headers = lim.max_headers
        self.max_body_bytes = int(lim.max_body_bytes)
        self.max_connections = lim.max_connections
        self.max_connections_per_client = lim.max_connections_per_client
        self.upstream_pool_size = lim.upstream_pool_size
        # (Used with or without a cap: requests also wait for servers that are on their way.)
        self.queue_size = lim.upstream_queue
        self.queue_s = float(t.queue)
        self.retries = cfg.balancer.retries
        self.request_rewriter = RequestRewriter(cfg.headers.request_id, cfg.headers.via, self.max_body_bytes)
        if rewriter is not None:   # keep request ids unique across reloads
            self.request_rewriter.continue_ids(rewriter)
        hsts = float(cfg.listen.tls.hsts_max_age) if cfg.listen.tls is not None else 0.0
        self.response_rewriter = ResponseRewriter(cfg.headers.security, cfg.balancer.served_by_header, hsts,
                                                  int(lim.max_response_header_bytes))
        self.retry_after = [(b"Retry-After", b"%d" % max(1, math.ceil(cfg.health.interval)))]
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in cfg.headers.trusted_proxies]

    def is_trusted(self, ip: str) -> bool:
        if not self._trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)
