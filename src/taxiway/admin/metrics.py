"""Prometheus metrics read from the balancer at scrape time.

Why a custom Collector instead of prometheus-client Counter/Gauge objects updated per request: the
proxy already keeps plain integer counters (`balancer.counters`, `Server.requests`, ...). Mirroring
them into client-library objects would cost a lock and a dict lookup per request on the hot path;
reading them when Prometheus scrapes costs nothing until someone asks (the pattern the client
library documents for "proxy" collectors that expose another system's numbers).

Metric names (all prefixed `taxiway_`):
  requests_total, responses_total{class}, errors_total{status}, retries_total,
  retry_budget_exhausted_total, proxy_events_total{event} (any other counter the proxy keeps),
  connections, waiting_requests, uptime_seconds, servers{state},
  server_requests_total{server}, server_failures_total{server}, server_inflight{server},
  server_bytes_in_total{server}, server_bytes_out_total{server}, server_up{server},
  server_weight{server}, server_latency_ewma_seconds{server},
  server_latency_seconds{server,quantile} (recent window, see admin/status.py),
  server_ejections{server}, server_sticky_clients{server}.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from taxiway.admin.status import BalancerView, percentile, recent_latencies
from taxiway.balancing.model import ServerState

# Counters with their own metric (name in balancer.counters -> metric name, help).
_SIMPLE_COUNTERS = {
    "requests": ("taxiway_requests", "Client requests received (after parsing the request head)."),
    "retries": ("taxiway_retries", "Requests retried on another server."),
    "retry_budget_exhausted": ("taxiway_retry_budget_exhausted",
                               "Retries refused because the retry budget was used up."),
}


class BalancerCollector(Collector):
    """Exposes a `Balancer`'s counters and servers; reads them only when `collect()` is called."""

    def __init__(self, balancer: BalancerView, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.balancer = balancer
        self.clock = clock            # the Server flags' clock (ejections, latency samples)
        self.wall_clock = wall_clock  # balancer.started_at's clock

    def collect(self) -> Iterator[Metric]:
        """Called by the registry on each scrape."""
        yield from self._proxy_metrics()
        yield from self._server_metrics(self.clock())

    def _proxy_metrics(self) -> Iterator[Metric]:
        b = self.balancer
        counters = dict(b.fold_counters())
        simple = {name: CounterMetricFamily(metric, help_text)
                  for name, (metric, help_text) in _SIMPLE_COUNTERS.items()}
        responses = CounterMetricFamily("taxiway_responses", "Responses sent to clients by status class.",
                                        labels=["class"])
        errors = CounterMetricFamily("taxiway_errors", "Error responses taxiway generated itself, by status.",
                                     labels=["status"])
        other = CounterMetricFamily("taxiway_proxy_events", "Other named proxy counters.", labels=["event"])
        for name in _SIMPLE_COUNTERS:
            simple[name].add_metric([], counters.pop(name, 0))
        for name, value in sorted(counters.items()):
            if name.startswith("responses_"):
                responses.add_metric([name[len("responses_"):]], value)
            elif name.startswith("error_"):
                errors.add_metric([name[len("error_"):]], value)
            else:
                other.add_metric([name], value)
        yield from simple.values()
        yield responses
        yield errors
        yield other
        yield GaugeMetricFamily("taxiway_connections", "Open client connections.",
                                value=b.connections)
        yield GaugeMetricFamily("taxiway_waiting_requests",
                                "Requests queued for a server slot or for a server that is starting.",
                                value=b.waiting.live())
        started = b.started_at
        if started:
            yield GaugeMetricFamily("taxiway_uptime_seconds", "Seconds since the balancer started.",
                                    value=max(0.0, self.wall_clock() - float(started)))

    def _server_metrics(self, now: float) -> Iterator[Metric]:
        servers = list(self.balancer.pool)
        states = GaugeMetricFamily("taxiway_servers", "Servers by state.", labels=["state"])
        counts = {s: 0 for s in ServerState}
        for srv in servers:
            counts[srv.state(now)] += 1
        for state, n in counts.items():
            states.add_metric([state.value], n)
        yield states

        def counter(name: str, help_text: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, help_text, labels=["server"])

        def gauge(name: str, help_text: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_text, labels=["server", *extra])

        requests = counter("taxiway_server_requests", "Requests sent to this server.")
        failures = counter("taxiway_server_failures", "Failed exchanges with this server.")
        bytes_in = counter("taxiway_server_bytes_in", "Request body bytes sent to this server.")
        bytes_out = counter("taxiway_server_bytes_out", "Response body bytes received from this server.")
        inflight = gauge("taxiway_server_inflight", "Requests in flight on this server.")
        up = gauge("taxiway_server_up", "1 if the server may take new requests now.")
        weight = gauge("taxiway_server_weight", "Configured weight.")
        ewma = gauge("taxiway_server_latency_ewma_seconds", "Peak-EWMA latency estimate.")
        quant = gauge("taxiway_server_latency_seconds", "Latency percentiles over the last minute.",
                      ("quantile",))
        ejections = gauge("taxiway_server_ejections", "Consecutive passive ejections.")
        sticky = gauge("taxiway_server_sticky_clients", "Clients pinned to this server by affinity.")
        for srv in servers:
            lab = [srv.name]
            requests.add_metric(lab, srv.requests)
            failures.add_metric(lab, srv.failures)
            bytes_in.add_metric(lab, srv.bytes_in)
            bytes_out.add_metric(lab, srv.bytes_out)
            inflight.add_metric(lab, srv.inflight)
            up.add_metric(lab, 1 if srv.is_available(now) else 0)
            weight.add_metric(lab, srv.weight)
            ewma.add_metric(lab, srv.latency_estimate(now))
            lat = recent_latencies(srv, now)
            for q in (0.5, 0.95, 0.99):
                v = percentile(lat, q * 100)
                if v is not None:
                    quant.add_metric([srv.name, str(q)], v)
            ejections.add_metric(lab, srv.ejections)
            sticky.add_metric(lab, srv.sticky_clients)
        yield from (requests, failures, bytes_in, bytes_out, inflight, up, weight, ewma, quant,
                    ejections, sticky)


def make_registry(balancer: BalancerView, clock: Callable[[], float] = time.monotonic,
                  wall_clock: Callable[[], float] = time.time) -> CollectorRegistry:
    """A private registry holding only this balancer's collector (not the process-global one, so
    tests and several balancers in one process never see each other's metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(balancer, clock, wall_clock))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (version 0.0.4) of `registry`."""
    return generate_latest(registry)
