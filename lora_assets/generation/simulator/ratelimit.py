"""Rate windows: the sliding windows of admitted requests and used tokens behind the 429s of
`FaultConfig.rpm_limit` and the `anthropic-ratelimit-*` headers on every answer."""

from __future__ import annotations

from collections import deque

from .content import rfc3339
from .faults import FaultConfig

__all__ = ["RateWindows"]

#: Rate-limit header values when no `rpm_limit` is configured (roughly a mid usage tier).
_DEFAULT_RPM = 4000
_TOKEN_LIMITS = {"tokens": 480_000, "input-tokens": 400_000, "output-tokens": 80_000}


class RateWindows:
    """Requests admitted and tokens used over the last `rate_window_s` seconds.

    Not thread-safe on purpose: the simulator calls it under its own lock, so a request's
    admission and its attempt index are taken in one step.
    """

    def __init__(self) -> None:
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int, int]] = deque()

    def admit(self, now: float, cfg: FaultConfig) -> float | None:
        """Take a request slot in the sliding window; seconds until one frees if none is left."""
        self._expire(now, cfg.rate_window_s)
        if cfg.rpm_limit is not None and len(self._requests) >= cfg.rpm_limit:
            return max(0.001, self._requests[0] + cfg.rate_window_s - now)
        self._requests.append(now)
        return None

    def record_tokens(self, at: float, input_tokens: int, output_tokens: int) -> None:
        """Count an answer's usage in the token window."""
        self._tokens.append((at, input_tokens, output_tokens))

    def headers(self, now: float, cfg: FaultConfig) -> dict[str, str]:
        """The `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*` headers."""
        self._expire(now, cfg.rate_window_s)
        limit = cfg.rpm_limit or _DEFAULT_RPM
        remaining = max(0, limit - len(self._requests))
        reset = self._requests[0] + cfg.rate_window_s if self._requests else now
        used_in = sum(t[1] for t in self._tokens)
        used_out = sum(t[2] for t in self._tokens)
        headers = {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": rfc3339(reset),
        }
        used = {"tokens": used_in + used_out, "input-tokens": used_in, "output-tokens": used_out}
        for kind, cap in _TOKEN_LIMITS.items():
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(cap)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(max(0, cap - used[kind]))
            headers[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(reset)
        return headers

    def _expire(self, now: float, window_s: float) -> None:
        while self._requests and self._requests[0] <= now - window_s:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= now - window_s:
            self._tokens.popleft()
