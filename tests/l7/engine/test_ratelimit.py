from __future__ import annotations

import pytest

from l7.engine.ratelimit import RateLimited, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refill_per_key() -> None:
    clock = Clock()
    rl = RateLimiter(lambda: {"b": {"rate_per_s": 2, "burst": 3}}, clock=clock)
    for _ in range(3):
        rl.check("b", "alice")
    with pytest.raises(RateLimited, match=r"b limit reached for 'alice'; retry after 0\.5s") as ei:
        rl.check("b", "alice")
    assert ei.value.retry_after_s == pytest.approx(0.5)
    rl.check("b", "bob")  # buckets are per key
    clock.t += 0.5
    rl.check("b", "alice")  # one token refilled
    with pytest.raises(RateLimited):
        rl.check("b", "alice")


@pytest.mark.parametrize(
    "limits", [{}, {"b": None}, {"b": {"rate_per_s": 0, "burst": 5}}, {"b": {"burst": 0}}]
)
def test_unconfigured_or_disabled_buckets_do_not_limit(limits: dict[str, object]) -> None:
    rl = RateLimiter(lambda: limits, clock=Clock())
    for _ in range(1000):
        rl.check("b", "alice")
