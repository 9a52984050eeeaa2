"""The proxy's decisions as pure functions, table by table (no sockets, no clock)."""

from __future__ import annotations

import pytest

from taxiway.proxy.forward import (
    client_keeps,
    may_retry,
    own_answer_closes,
    response_closes,
    stale_reuse,
)


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


@pytest.mark.parametrize(("http11", "close", "keep_alive", "upgrade", "keeps"), [
    pytest.param(True, False, False, False, True, id="http11-keeps-by-default"),
    pytest.param(True, True, False, False, False, id="http11-connection-close"),
    pytest.param(False, False, False, False, False, id="http10-closes-by-default"),
    pytest.param(False, False, True, False, True, id="http10-keep-alive-asked"),
    pytest.param(False, True, True, False, False, id="close-wins-over-keep-alive"),
    pytest.param(True, False, False, True, False, id="upgrade-keeps-nothing"),
])
def test_client_keeps(http11: bool, close: bool, keep_alive: bool, upgrade: bool, keeps: bool) -> None:
    assert client_keeps(http11, close, keep_alive, upgrade) is keeps


@pytest.mark.parametrize(("keep_alive", "body_unread", "closing", "closes"), [
    pytest.param(True, False, False, False, id="a-refusal-on-a-kept-connection"),
    pytest.param(False, False, False, True, id="the-request-said-close"),
    pytest.param(True, True, False, True, id="its-body-is-still-unread"),
    pytest.param(True, False, True, True, id="the-connection-is-closing"),
])
def test_own_answer_closes(keep_alive: bool, body_unread: bool, closing: bool, closes: bool) -> None:
    assert own_answer_closes(keep_alive, body_unread, closing) is closes


@pytest.mark.parametrize(("keep_alive", "closing", "upgrade", "status", "closes"), [
    pytest.param(True, False, False, 200, False, id="usual"),
    pytest.param(False, False, False, 200, True, id="the-request-said-close"),
    pytest.param(True, True, False, 200, True, id="shutting-down"),
    pytest.param(True, False, True, 101, False, id="upgrade-accepted-becomes-a-tunnel"),
    pytest.param(True, False, True, 200, True, id="upgrade-refused"),
])
def test_response_closes(keep_alive: bool, closing: bool, upgrade: bool, status: int, closes: bool) -> None:
    assert response_closes(keep_alive, closing, upgrade, status) is closes
