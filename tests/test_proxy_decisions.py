"""The proxy's decisions as pure functions, table by table (no sockets, no clock)."""

from __future__ import annotations

import pytest

from taxiway.proxy.forward import LOSS_FAIL, LOSS_RETRY, LOSS_SAME_SERVER, after_loss


@pytest.mark.parametrize(("uses", "got_bytes", "sent", "stale_retried", "replayable", "idem", "tried",
                          "retries", "decision"), [
    # A pooled connection closed under an idempotent request, no byte back: same server, once.
    pytest.param(2, False, 120, False, True, True, 1, 2, LOSS_SAME_SERVER, id="stale-pooled-get"),
    pytest.param(2, False, 120, True, True, True, 1, 2, LOSS_RETRY, id="stale-again-goes-elsewhere"),
    pytest.param(1, False, 120, False, True, True, 1, 2, LOSS_RETRY, id="fresh-connection-is-not-stale"),
    pytest.param(2, True, 120, False, True, True, 1, 2, LOSS_RETRY, id="bytes-came-back-not-stale"),
    # Elsewhere: idempotent, or nothing of it reached the server; body still held; attempts left.
    pytest.param(1, True, 120, False, True, True, 2, 2, LOSS_RETRY, id="last-allowed-attempt"),
    pytest.param(1, True, 120, False, True, True, 3, 2, LOSS_FAIL, id="retries-used-up"),
    pytest.param(1, False, 0, False, True, False, 1, 2, LOSS_RETRY, id="post-never-sent"),
    pytest.param(1, False, 5, False, True, False, 1, 2, LOSS_FAIL, id="post-that-reached-the-server"),
    pytest.param(2, False, 5, False, True, False, 1, 2, LOSS_FAIL, id="post-on-a-stale-connection"),
    pytest.param(1, False, 0, False, False, True, 1, 2, LOSS_FAIL, id="body-too-big-to-replay"),
    pytest.param(2, False, 0, False, False, True, 1, 2, LOSS_FAIL, id="stale-but-body-too-big"),
    pytest.param(1, False, 0, False, True, True, 1, 0, LOSS_FAIL, id="retries-off"),
])
def test_after_loss(uses: int, got_bytes: bool, sent: int, stale_retried: bool, replayable: bool, idem: bool,
                    tried: int, retries: int, decision: int) -> None:
    assert after_loss(uses, got_bytes, sent, stale_retried, replayable, idem, tried, retries) == decision
