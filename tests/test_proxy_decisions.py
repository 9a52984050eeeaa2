"""The proxy's decisions as pure functions, table by table (no sockets, no clock)."""

from __future__ import annotations

import pytest

from taxiway.proxy.forward import may_retry, stale_reuse


@pytest.mark.parametrize(("uses", "got_bytes", "stale_retried", "replayable", "idem", "again"), [
    # A pooled connection closed under an idempotent request, no byte back: same server, once.
    pytest.param(2, False, False, True, True, True, id="stale-pooled-get"),
    pytest.param(2, False, True, True, True, False, id="only-once"),
    pytest.param(1, False, False, True, True, False, id="a-fresh-connection-is-not-stale"),
    pytest.param(2, True, False, True, True, False, id="bytes-came-back"),
    pytest.param(2, False, False, True, False, False, id="post-is-not-replayed-there"),
    pytest.param(2, False, False, False, True, False, id="body-too-big-to-replay"),
])
def test_stale_reuse(uses: int, got_bytes: bool, stale_retried: bool, replayable: bool, idem: bool,
                     again: bool) -> None:
    assert stale_reuse(uses, got_bytes, stale_retried, replayable, idem) is again


@pytest.mark.parametrize(("sent", "replayable", "idem", "tried", "retries", "retry"), [
    pytest.param(120, True, True, 1, 2, True, id="get-first-failure"),
    pytest.param(120, True, True, 2, 2, True, id="last-allowed-attempt"),
    pytest.param(120, True, True, 3, 2, False, id="retries-used-up"),
    pytest.param(0, True, False, 1, 2, True, id="post-never-sent"),
    pytest.param(5, True, False, 1, 2, False, id="post-that-reached-the-server"),
    pytest.param(0, False, True, 1, 2, False, id="body-too-big-to-replay"),
    pytest.param(0, True, True, 1, 0, False, id="retries-off"),
])
def test_may_retry(sent: int, replayable: bool, idem: bool, tried: int, retries: int, retry: bool) -> None:
    assert may_retry(sent, replayable, idem, tried, retries) is retry
