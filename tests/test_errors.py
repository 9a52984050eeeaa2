"""errors.py is the one error hierarchy, and every class in it means something: it is raised
somewhere in taxiway, or it is the base of classes that are (so a caller can catch the family)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import taxiway.errors as errors
from taxiway.errors import (
    ConnectTimeout,
    RateStoreError,
    RequestRefused,
    RespError,
    StoreError,
    TaxiwayError,
    UpstreamFailed,
)

SRC = Path(errors.__file__).parent


def test_every_error_class_is_raised_or_is_the_base_of_one_that_is() -> None:
    code = "\n".join(p.read_text() for p in SRC.rglob("*.py") if p.name != "errors.py")
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    raised = {c for c in classes if re.search(rf"\b(raise|set_exception\(|return) {c.__name__}\(", code)}
    # Upstream failures travel as values (the class itself), reported by the exchange.
    raised |= {c for c in classes if issubclass(c, UpstreamFailed) and c is not UpstreamFailed
               and re.search(rf"\b_?fail\w*\({c.__name__}\b|\b{c.__name__} if |else {c.__name__}\)", code)}
    unused = [c.__name__ for c in classes
              if c not in raised and not any(issubclass(r, c) and r is not c for r in raised)]
    assert not unused, f"never raised, and no raised subclass: {unused}"


def test_the_families_a_caller_catches() -> None:
    assert issubclass(RespError, StoreError) and issubclass(RateStoreError, StoreError)
    assert all(issubclass(c, TaxiwayError) for c in (StoreError, RequestRefused))
    refused = RequestRefused(431, "header section too large")
    assert refused.status == 431 and str(refused) == "header section too large"


def test_each_upstream_failure_has_its_own_reason_and_a_gateway_status() -> None:
    kinds = UpstreamFailed.__subclasses__()
    assert len(kinds) >= 7
    assert len({k.reason for k in kinds}) == len(kinds), "two failures would read the same in the events"
    assert {k.status for k in kinds} == {502, 504}
    assert ConnectTimeout.status == 504 and issubclass(ConnectTimeout, TaxiwayError)
