"""What the simulator does wrong, and how it picks: `FaultConfig` and the deterministic draws.

The outcome of a request is a pure function of (seed, request key, attempt index for that key):
the key and attempt are hashed to a uniform number in [0, 1) that falls into one bucket of the
cumulative fault rates. Results are reproducible, and a retry (the next attempt) can succeed.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, Field

__all__ = [
    "BATCH_FAULTS",
    "CONTENT_FAULTS",
    "DELIVERING",
    "MESSAGE_FAULTS",
    "FaultConfig",
    "batch_outcome",
    "digest",
    "message_outcome",
    "pick",
    "unit",
]

#: Messages-request outcomes, in the order their rates are checked (see `FaultConfig._message_rates`).
MESSAGE_FAULTS = ("overloaded", "server_error", "slow", "truncated", "malformed", "refusal", "wrapped", "thinking")
#: Outcomes that change the text of a 200 answer (see `FaultConfig._content_rates`).
CONTENT_FAULTS = ("truncated", "malformed", "refusal", "wrapped", "thinking")
#: Batch-result outcomes: errored and expired results, then the content faults of succeeded ones.
BATCH_FAULTS = ("batch_errored", "batch_expired", *CONTENT_FAULTS)
#: Outcomes whose text block is a complete conversation (a fence or a thinking block does not break it).
DELIVERING = frozenset({"ok", "slow", "wrapped", "thinking"})


class FaultConfig(BaseModel):
    """What the simulator does wrong, and how often. Rates are per request, in [0, 1]; they are
    cumulative (checked in field order), so their sum should stay at or below 1."""

    latency_s: float = Field(default=0.0, ge=0.0)
    rpm_limit: int | None = Field(default=None, ge=1)
    rate_window_s: float = Field(default=60.0, gt=0.0)
    overload_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    server_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    slow_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    slow_s: float = Field(default=30.0, ge=0.0)
    truncation_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    malformed_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    refusal_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    wrapped_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    thinking_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_processing_s: float = Field(default=0.3, ge=0.0)
    batch_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_expire_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = 0

    def _message_rates(self) -> tuple[float, ...]:
        return (
            self.overload_rate,
            self.server_error_rate,
            self.slow_rate,
            self.truncation_rate,
            self.malformed_rate,
            self.refusal_rate,
            self.wrapped_rate,
            self.thinking_rate,
        )

    def _content_rates(self) -> tuple[float, ...]:
        return (self.truncation_rate, self.malformed_rate, self.refusal_rate, self.wrapped_rate, self.thinking_rate)


def digest(*parts: object) -> bytes:
    """SHA-256 of `parts` joined by a unit separator: the seed of every deterministic choice."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def unit(*parts: object) -> float:
    """A uniform number in [0, 1) determined by `parts`."""
    return int.from_bytes(digest(*parts)[:8], "big") / 2**64


def pick(u: float, outcomes: tuple[str, ...], rates: tuple[float, ...], default: str = "ok") -> str:
    """The outcome whose cumulative-rate bucket contains `u`."""
    edge = 0.0
    for outcome, rate in zip(outcomes, rates, strict=True):
        edge += rate
        if u < edge:
            return outcome
    return default


def message_outcome(cfg: FaultConfig, key: str, attempt: int) -> str:
    """The outcome of attempt `attempt` of Messages request `key` (before rate limiting)."""
    return pick(unit(cfg.seed, "messages", key, attempt), MESSAGE_FAULTS, cfg._message_rates())


def batch_outcome(cfg: FaultConfig, custom_id: str, attempt: int) -> tuple[str, float]:
    """The outcome of batch request `custom_id` on its `attempt`-th submission, and when within the
    batch's processing time it finishes (a fraction in [0, 1); it matters on cancel)."""
    rates = (cfg.batch_error_rate, cfg.batch_expire_rate, *cfg._content_rates())
    outcome = pick(unit(cfg.seed, "batch", custom_id, attempt), BATCH_FAULTS, rates)
    return outcome, unit(cfg.seed, "finish", custom_id, attempt)
