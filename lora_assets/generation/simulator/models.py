"""The models the simulator answers for, and what each one allows: output limit, minimum
cacheable prompt, adaptive thinking (default effort, whether it can be turned off).

A model outside this table is answered 404 `not_found_error`: the simulator cannot say how it
behaves. Sources: Anthropic's "What's new in Claude Haiku 5.5", the Haiku 5.5 overview (model
comparison table: thinking, default effort, 128K output) and "Troubleshooting thinking"
(rejected `thinking.type` values per model); Claude Opus 5 figures from the thinking-guide
change log (it can turn thinking off at effort high or lower, default effort high).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["EFFORTS", "MODELS", "ModelSpec", "model_spec"]

#: `output_config.effort` values, lowest first (the SDK's OutputConfigParam literal).
EFFORTS = ("low", "medium", "high", "xhigh", "max")


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts and how it thinks."""

    max_output_tokens: int
    #: Prompt caching: a prefix shorter than this is not cached (usage shows 0 written, 0 read).
    min_cacheable_tokens: int
    default_effort: str
    #: `thinking: {"type": "disabled"}` is accepted up to this effort (None: never; thinking always on).
    disable_up_to_effort: str | None
    #: `thinking: {"type": "between_tools"}` accepted (Sonnet 5.5 uses it instead of disabled).
    between_tools: bool = False

    def may_disable(self, effort: str) -> bool:
        """Whether thinking can be turned off at `effort`."""
        cap = self.disable_up_to_effort
        return cap is not None and EFFORTS.index(effort) <= EFFORTS.index(cap)


#: Every model thinks adaptively by default; none accepts manual `budget_tokens` (adaptive only).
MODELS: dict[str, ModelSpec] = {
    "claude-haiku-5-5": ModelSpec(128_000, 512, "medium", disable_up_to_effort="high"),
    "claude-sonnet-5-5": ModelSpec(128_000, 512, "high", disable_up_to_effort=None, between_tools=True),
    "claude-opus-5-5": ModelSpec(128_000, 512, "medium", disable_up_to_effort=None),
    "claude-opus-5": ModelSpec(128_000, 512, "high", disable_up_to_effort="high"),
}

#: Dated snapshot ids the simulator knows, resolving to their alias.
SNAPSHOTS = {"claude-haiku-5-5-20261007": "claude-haiku-5-5"}

_SNAPSHOT_RE = re.compile(r"-\d{8}$")


def model_spec(model: str) -> tuple[str, ModelSpec] | None:
    """The alias and spec of `model` (an alias or a known dated snapshot id), or None if unknown."""
    alias = SNAPSHOTS.get(model, model)
    spec = MODELS.get(alias)
    return (alias, spec) if spec is not None and not _SNAPSHOT_RE.search(alias) else None
