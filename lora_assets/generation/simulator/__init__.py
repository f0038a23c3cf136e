"""Loopback Claude simulator: a small stdlib HTTP server that speaks the Anthropic endpoints the
official `anthropic` 2.x SDK calls (Messages, count_tokens, Message Batches), composes a
deterministic, schema-valid conversation from the prompt's `<scaffolding>` block, reports realistic
usage (adaptive thinking, prompt caching), enforces the API's contract (the SDK's own request types
and the published limits) and per-model RPM/ITPM/OTPM token buckets, and injects deterministic
faults.

Point the real SDK at it with `base_url=sim.base_url`. Every message id starts with `msg_sim_` and
every response carries `x-lora-simulator: true`, so its output is never mistaken for Claude's.

Fault selection: for each request the rate limiter admits, the simulator hashes (seed, request
key, admitted-attempt index for that key) to a uniform number in [0, 1) and compares it with the
cumulative fault rates, so results are reproducible (with fixed keys, whatever the 429s) and a
retry (next attempt index) can succeed.

Modules (each layer knows only the ones above it in this list):
- `faults`: `FaultConfig` and the deterministic outcome picking;
- `models`: the models it answers for (output limit, minimum cacheable prompt, thinking rules);
- `contract`: the strict checks of every request body (README, "The simulator's contract");
- `phrases`, `content`: the conversations and judge scores it writes, broken texts, token estimates;
- `stats`: `SimulatorStats`, the HTTP-layer counts tests audit;
- `replies`: composing a message for an outcome (thinking included), usage and the prompt cache;
- `batches`: Message Batches state and clock;
- `ratelimit`: the per-model token buckets behind 429s and the rate-limit headers;
- `transport`: the threading HTTP server and its request handler;
- `server`: routing and the endpoints, `ClaudeSimulator` and `serve`.
"""

from __future__ import annotations

from .content import compose_conversation, judge_scores
from .faults import BATCH_FAULTS, CONTENT_FAULTS, MESSAGE_FAULTS, FaultConfig, pick, unit
from .server import ClaudeSimulator, serve
from .stats import SimulatorStats

__all__ = [
    "BATCH_FAULTS",
    "CONTENT_FAULTS",
    "MESSAGE_FAULTS",
    "ClaudeSimulator",
    "FaultConfig",
    "SimulatorStats",
    "compose_conversation",
    "judge_scores",
    "pick",
    "serve",
    "unit",
]

# The private names callers used before the split (bench/bench_local.py, lora_assets_tests/defs/
# test_pipeline.py and test_judging.py); new code imports the public names above.
_compose_conversation = compose_conversation
_MESSAGE_FAULTS = MESSAGE_FAULTS
_pick = pick
_unit = unit
#: The judge the simulator answers `<judge_request>` prompts with. `replies` looks it up here at
#: call time, so a test can swap it (test_judging.py makes the judge's answer unusable).
_judge_scores = judge_scores
