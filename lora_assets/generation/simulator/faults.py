"""What the simulator does wrong, and how it picks: `FaultConfig` and the deterministic draws.

The outcome of a request is a pure function of (seed, request key, index of the attempt among
that key's attempts the rate limiter admitted; a 429 draws nothing):
the key and attempt are hashed to a uniform number in [0, 1) that falls into one bucket of the
cumulative fault rates. Results are reproducible, and a retry (the next attempt) can succeed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

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


#: Rate limits when none is set: effectively unlimited, so tests, the demo and benches are not
#: slowed; set a real tier's values (e.g. 4,000 / 400,000 / 80,000) to meter like the API.
DEFAULT_RPM = 1_000_000
DEFAULT_ITPM = 1_000_000_000
DEFAULT_OTPM = 200_000_000


def _env(name: str, parse: Callable[[str], object], default: object) -> Callable[[], object]:
    """A default factory reading environment variable `name` (so `make demo` and the CLI can set
    the simulator's contract and limits without code): `default` when unset or empty."""

    def read() -> object:
        value = os.environ.get(name, "").strip()
        if not value:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            raise ValueError(f"{name}={value!r}: {exc}") from exc

    return read


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected on/off, true/false, 1/0 or yes/no")


class FaultConfig(BaseModel):
    """What the simulator does wrong, and how often, plus the contract and limits it enforces.
    Rates are per request, in [0, 1]; they are cumulative (checked in field order), so their sum
    should stay at or below 1.

    `strict` (env LORA_SIM_STRICT, on by default) refuses bodies outside the SDK's request types
    and the published limits. `rpm_limit`, `itpm_limit`, `otpm_limit` (env LORA_SIM_RPM,
    LORA_SIM_ITPM, LORA_SIM_OTPM) are per-model token buckets refilled over `rate_window_s`.
    `thinking_scale` (env LORA_SIM_THINKING_SCALE) scales the thinking tokens of models that
    think; `batch_cache_hit_rate` (env LORA_SIM_BATCH_CACHE_HIT_RATE) is the share of cache hits
    a batch request gets when the prefix is cached (best effort in the API)."""

    strict: bool = Field(default_factory=_env("LORA_SIM_STRICT", _flag, True))
    latency_s: float = Field(default=0.0, ge=0.0)
    rpm_limit: int | None = Field(default_factory=_env("LORA_SIM_RPM", int, None), ge=1)
    itpm_limit: int | None = Field(default_factory=_env("LORA_SIM_ITPM", int, None), ge=1)
    otpm_limit: int | None = Field(default_factory=_env("LORA_SIM_OTPM", int, None), ge=1)
    rate_window_s: float = Field(default=60.0, gt=0.0)
    thinking_scale: float = Field(default_factory=_env("LORA_SIM_THINKING_SCALE", float, 1.0), ge=0.0)
    batch_cache_hit_rate: float = Field(default_factory=_env("LORA_SIM_BATCH_CACHE_HIT_RATE", float, 0.1), ge=0.0, le=1.0)
    batch_max_requests: int = Field(default=100_000, ge=1)
    batch_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
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

    def rpm(self) -> int:
        """The requests bucket's per-window limit (`rpm_limit`, or the generous default)."""
        return self.rpm_limit or DEFAULT_RPM

    def itpm(self) -> int:
        """The input-tokens bucket's per-window limit."""
        return self.itpm_limit or DEFAULT_ITPM

    def otpm(self) -> int:
        """The output-tokens bucket's per-window limit."""
        return self.otpm_limit or DEFAULT_OTPM

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
