"""Rate limits as the API documents them: per model, three token buckets refilled continuously
(requests, input tokens, output tokens), behind the 429s and the `anthropic-ratelimit-*` headers.

- RPM: one token per request.
- ITPM: the request's uncached input (input tokens plus cache writes; cache reads are not
  counted), charged when it is admitted.
- OTPM: `max_tokens` reserved when the request is admitted and settled to the actual output when
  it ends, so an oversized `max_tokens` holds capacity it never uses.

A bucket holds at most its per-minute limit and refills at limit / `rate_window_s` per second. A
request is admitted when every bucket holds what it needs (a need above the capacity is capped at
the capacity, so a huge `max_tokens` waits for a full bucket rather than forever). A refused
request is answered 429 with `retry-after` in whole seconds (rounded up): the wait until every
bucket it needs has refilled enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .content import rfc3339
from .faults import FaultConfig

__all__ = ["Admission", "RateLimits"]

_KINDS = ("requests", "input-tokens", "output-tokens")
_NAMES = {"requests": "requests", "input-tokens": "input tokens", "output-tokens": "output tokens"}


@dataclass
class _Bucket:
    limit: int
    level: float
    at: float

    def refill(self, now: float, window_s: float) -> None:
        self.level = min(float(self.limit), self.level + (now - self.at) * self.limit / window_s)
        self.at = now

    def wait_for(self, need: float, window_s: float) -> float:
        """Seconds until the bucket holds `need` (0 if it does)."""
        need = min(need, float(self.limit))
        return max(0.0, (need - self.level) * window_s / self.limit)


@dataclass(frozen=True)
class Admission:
    """The outcome of `RateLimits.admit`: admitted, or the wait and the limit that refused it."""

    admitted: bool
    retry_after_s: float = 0.0
    message: str = ""


class RateLimits:
    """The buckets of every model the simulator has seen.

    Not thread-safe on purpose: the simulator calls it under its own lock, so a request's
    admission and its attempt index are taken in one step.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, dict[str, _Bucket]] = {}
        self._last: str | None = None  # the model answers without one (batches, 401s) report

    @staticmethod
    def _limits(cfg: FaultConfig) -> dict[str, int]:
        return {"requests": cfg.rpm(), "input-tokens": cfg.itpm(), "output-tokens": cfg.otpm()}

    def _of(self, model: str, now: float, cfg: FaultConfig) -> dict[str, _Bucket]:
        limits = self._limits(cfg)
        buckets = self._buckets.setdefault(model, {})
        for kind, limit in limits.items():
            bucket = buckets.get(kind)
            if bucket is None:
                buckets[kind] = _Bucket(limit, float(limit), now)
                continue
            bucket.refill(now, cfg.rate_window_s)
            if bucket.limit != limit:  # the config changed mid-run: keep what was used, within the new limit
                used = bucket.limit - bucket.level
                bucket.limit, bucket.level = limit, min(float(limit), limit - used)
        return buckets

    def admit(self, model: str, now: float, cfg: FaultConfig, input_tokens: int, max_tokens: int) -> Admission:
        """Take one request, its uncached input and its `max_tokens` reservation from `model`'s
        buckets, or refuse with the wait until they would all fit."""
        self._last = model
        buckets = self._of(model, now, cfg)
        needs = {"requests": 1, "input-tokens": input_tokens, "output-tokens": max_tokens}
        waits = {kind: buckets[kind].wait_for(needs[kind], cfg.rate_window_s) for kind in _KINDS}
        worst = max(_KINDS, key=lambda kind: waits[kind])
        if waits[worst] > 0:
            limit = buckets[worst].limit
            per = "minute" if cfg.rate_window_s == 60 else f"{cfg.rate_window_s:g} seconds"
            message = (
                f"This request would exceed the rate limit for your organization of {limit:,} "
                f"{_NAMES[worst]} per {per} for {model}. Retry after the retry-after header's seconds."
            )
            return Admission(False, max(waits.values()), message)
        for kind in _KINDS:
            buckets[kind].level -= min(needs[kind], buckets[kind].limit)
        return Admission(True)

    def settle(self, model: str, now: float, cfg: FaultConfig, reserved: int, output_tokens: int) -> None:
        """Give back the part of a `max_tokens` reservation the answer did not use."""
        bucket = self._of(model, now, cfg)["output-tokens"]
        reserved = min(reserved, bucket.limit)
        bucket.level = min(float(bucket.limit), bucket.level + max(0, reserved - output_tokens))

    def headers(self, model: str | None, now: float, cfg: FaultConfig) -> dict[str, str]:
        """`anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}`:
        reset is when the bucket is full again (RFC 3339); token counts are rounded down to the
        thousand, as the API rounds them; `tokens-*` is the more restrictive token bucket."""
        model = model or self._last
        if model is None:
            buckets = {k: _Bucket(v, float(v), now) for k, v in self._limits(cfg).items()}
        else:
            buckets = self._of(model, now, cfg)
        headers: dict[str, str] = {}
        for kind in _KINDS:
            bucket = buckets[kind]
            remaining = math.floor(max(0.0, bucket.level))
            if kind != "requests":
                remaining = remaining // 1000 * 1000
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(bucket.limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(now + bucket.wait_for(bucket.limit, cfg.rate_window_s))
        tighter = min(("input-tokens", "output-tokens"), key=lambda k: buckets[k].level / buckets[k].limit)
        for part in ("limit", "remaining", "reset"):
            headers[f"anthropic-ratelimit-tokens-{part}"] = headers[f"anthropic-ratelimit-{tighter}-{part}"]
        return headers
