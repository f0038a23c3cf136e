"""The rate-limit headers of an Anthropic API answer, parsed: `anthropic-ratelimit-{requests,
input-tokens,output-tokens}-{limit,remaining,reset}` and the wait a refusal asks for
(`retry-after`, whole seconds on the API; `retry-after-ms` is still read when a server sends it).
Missing or unreadable values become None: pacing then falls back on what it already knows."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import datetime

import httpx2

__all__ = ["BucketSnapshot", "RateLimitSnapshot", "rate_limit_snapshot", "retry_after_seconds"]

@dataclass(frozen=True)
class BucketSnapshot:
    """One token bucket's `anthropic-ratelimit-<name>-{limit,remaining,reset}` (reset as a local
    epoch time: when the bucket is full again)."""

    limit: int
    remaining: int
    reset_at: float | None


@dataclass(frozen=True)
class RateLimitSnapshot:
    """`anthropic-ratelimit-requests-*` as read from one response (reset as a local epoch time),
    plus the input- and output-token buckets when the response named them."""

    limit: int | None
    remaining: int | None
    reset_at: float | None
    input_tokens: BucketSnapshot | None = None
    output_tokens: BucketSnapshot | None = None


def _header_int(headers: httpx2.Headers | dict[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value) if value.isdigit() else int(float(value))
    except (TypeError, ValueError):
        return None


def _bucket(headers: httpx2.Headers | dict[str, str], name: str) -> BucketSnapshot | None:
    limit = _header_int(headers, f"anthropic-ratelimit-{name}-limit")
    remaining = _header_int(headers, f"anthropic-ratelimit-{name}-remaining")
    if limit is None or remaining is None:
        return None
    return BucketSnapshot(limit, remaining, _parse_reset(headers.get(f"anthropic-ratelimit-{name}-reset")))


def rate_limit_snapshot(headers: httpx2.Headers | dict[str, str]) -> RateLimitSnapshot:
    """Parse the rate-limit headers (requests, input tokens, output tokens); missing or unreadable
    values become None."""
    return RateLimitSnapshot(
        limit=_header_int(headers, "anthropic-ratelimit-requests-limit"),
        remaining=_header_int(headers, "anthropic-ratelimit-requests-remaining"),
        reset_at=_parse_reset(headers.get("anthropic-ratelimit-requests-reset")),
        input_tokens=_bucket(headers, "input-tokens"),
        output_tokens=_bucket(headers, "output-tokens"),
    )


def _parse_reset(value: str | None) -> float | None:
    # The API sends an RFC 3339 timestamp; accept plain seconds too (relative if small).
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return number if number > 1e9 else time.time() + number


def retry_after_seconds(headers: httpx2.Headers | dict[str, str] | None) -> float | None:
    """The wait a response asks for: `retry-after-ms`, then `retry-after` (seconds or HTTP date)."""
    if not headers:
        return None
    try:
        return max(0.0, float(headers.get("retry-after-ms")) / 1000)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return None if parsed is None else max(0.0, email.utils.mktime_tz(parsed) - time.time())
