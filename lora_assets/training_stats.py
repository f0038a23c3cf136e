"""What a training-file build measures and decides besides the files themselves: the human
review state of its members, the filters it ran, token lengths and train/validation leakage —
all gathered in the build's one streaming pass (`BuildMeasures`) and recorded on the version row
(`stats`), where the `training_file_lengths` / `training_file_leakage` checks read them back.

Plain Python (no Dagster, no I/O): the decision functions (`length_problems`,
`leakage_problems`) are what the checks apply to the recorded figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from lora_assets.core.dedup import TargetTexts
from lora_assets.core.export import ChatExample, Split
from lora_assets.core.leakage import ExampleMeasure, LeakageReport, LeakageStats, LeakageThresholds
from lora_assets.core.tokens import LengthReport, LengthStats, TokenCounter
from lora_assets.schemas import EnrichedConversation

#: `conversations.review_decision` values (NULL: not reviewed).
APPROVE = "approve"
REJECT = "reject"

#: Filter names as the card and the metadata list them.
FILTER_QUALITY = "quality"
FILTER_JUDGE = "judge"
FILTER_REVIEW_REJECTED = "review-rejected"
FILTER_DEDUP = "dedup"


def is_rejected(row: Mapping[str, Any]) -> bool:
    """Whether a human reviewer rejected the member (it never goes into a version)."""
    return row.get("review_decision") == REJECT


def with_review(conv: EnrichedConversation, row: Mapping[str, Any]) -> EnrichedConversation:
    """`conv` with the DB's review state on every training pair: an approved conversation's pairs
    say `human_reviewed: true` and carry the reviewer's notes. The DB is the record of review
    (the enriched file predates it), so what the version holds and counts agrees with it; a
    conversation not approved keeps what its file says."""
    if row.get("review_decision") != APPROVE:
        return conv
    notes = row.get("reviewer_notes")
    pairs = []
    for p in conv.training_pairs:
        meta = p.training_metadata
        reviewed = meta.model_copy(update={"human_reviewed": True,
                                           "reviewer_notes": notes if notes is not None else meta.reviewer_notes})
        pairs.append(p.model_copy(update={"training_metadata": reviewed}))
    return conv.model_copy(update={"training_pairs": pairs})


def filters_run(min_quality: float | None, min_judge_score: float | None) -> list[str]:
    """The filters a build runs, in order: review-rejected and dedup always, quality and judge
    when their threshold is set."""
    ran = [FILTER_REVIEW_REJECTED]
    if min_quality is not None:
        ran.append(FILTER_QUALITY)
    if min_judge_score is not None:
        ran.append(FILTER_JUDGE)
    return [*ran, FILTER_DEDUP]


class Measured(BaseModel):
    """What `BuildMeasures` found: token lengths (with the cut at the effective max_length) and
    leakage/diversity, plus the settings they were judged with."""

    model_config = ConfigDict(frozen=True)

    lengths: LengthReport
    max_length: int | None
    leakage: LeakageReport
    leakage_thresholds: LeakageThresholds

    @property
    def effective_max_length(self) -> int:
        """The configured max_length, else the recommended one."""
        return self.max_length if self.max_length is not None else self.lengths.recommended_max_length

    def stats(self) -> dict[str, Any]:
        """The entries recorded in the version row's `stats` (read back by the checks)."""
        return {
            "tokenizer": self.lengths.method,
            "max_length": self.max_length,
            "lengths": self.lengths.model_dump(mode="json"),
            "leakage": self.leakage.model_dump(mode="json"),
            "leakage_thresholds": self.leakage_thresholds.model_dump(mode="json"),
        }


class BuildMeasures:
    """Token lengths and leakage of every exported chat example (the HF messages form, train and
    validation), fed one example at a time while the build streams its outputs."""

    def __init__(self, counter: TokenCounter, *, max_length: int | None, thresholds: LeakageThresholds) -> None:
        self.lengths = LengthStats(counter)
        self.leakage = LeakageStats()
        self.max_length = max_length
        self.thresholds = thresholds

    def add(self, example: ChatExample | None, split: Split, row: Mapping[str, Any]) -> None:
        """Measure one member's exported example (None: it exported none); `row` is its member row
        (its persona / arc / topic keys are the diversity cell). `record(measure(…), …)`."""
        self.record(self.measure(example, row), split, row)

    def measure(self, example: ChatExample | None, row: Mapping[str, Any], *,
                known: Mapping[str, tuple[str, list[str]]] | None = None,
                targets: TargetTexts | None = None) -> ExampleMeasure | None:
        """Everything about the example that does not depend on its split (lengths, diversity,
        templates, digests and signatures), while the build reads its members; `record` it once
        the split is known, in the same order. `known` / `targets`: answers already normalised
        (dedup's; `targets` with their shingles too)."""
        if example is None:
            return None
        self.lengths.add(example.messages)
        return self.leakage.measure(example.messages, known=known, targets=targets,
                                    cell=(row.get("persona_key"), row.get("arc_key"), row.get("topic_key")))

    def record(self, measured: ExampleMeasure | None, split: Split, row: Mapping[str, Any]) -> None:
        """The measured example (None: it exported none) goes to `split`."""
        if measured is not None:
            self.leakage.record(measured, split, conversation_id=row["id"])

    def close(self) -> None:
        """Let go of the leakage check's temporary files (after `result`)."""
        self.leakage.close()

    def result(self) -> Measured:
        """The figures; the truncation is computed at the configured max_length, else at the
        recommended one (which cuts nothing by construction)."""
        lengths = self.lengths.result(self.max_length)
        if lengths.truncation is None:
            lengths = lengths.model_copy(update={"truncation": self.lengths.over(lengths.recommended_max_length)})
        return Measured(lengths=lengths, max_length=self.max_length, leakage=self.leakage.result(),
                        leakage_thresholds=self.thresholds)


# --- decisions the checks apply to the recorded figures ---------------------------------------------


class NotRecordedError(ValueError):
    """A version built before its build recorded these figures."""


def recorded(stats: Mapping[str, Any] | None) -> Measured:
    """The figures a version's `stats` recorded (NotRecordedError when it recorded none)."""
    stats = stats or {}
    if "lengths" not in stats or "leakage" not in stats:
        raise NotRecordedError("this version records no token-length / leakage figures (built before they were "
                               "measured): rebuild it")
    return Measured(lengths=LengthReport.model_validate(stats["lengths"]), max_length=stats.get("max_length"),
                    leakage=LeakageReport.model_validate(stats["leakage"]),
                    leakage_thresholds=LeakageThresholds.model_validate(stats.get("leakage_thresholds") or {}))


def length_problems(measured: Measured) -> list[str]:
    """What training at the effective max_length would cut: one problem naming how many examples
    exceed it and how many assistant tokens would never be trained (empty when nothing is cut)."""
    t = measured.lengths.truncation
    if t is None or not (t.examples_over or t.assistant_tokens_cut):
        return []
    return [
        f"{t.examples_over} example(s) exceed max_length {t.max_length} ({measured.lengths.method}); "
        f"{t.assistant_tokens_cut} of {t.assistant_tokens_total} trained (assistant) tokens ({t.assistant_cut_rate:.1%}) "
        f"would be cut and never trained (longest example {measured.lengths.examples.max}; recommended TRL "
        f"max_length {measured.lengths.recommended_max_length})"
    ]


def split_problems(stats: Mapping[str, Any] | None) -> list[str]:
    """The one-line warning of a version whose duplicate groups left no validation set (empty
    otherwise, and for versions built before the split recorded its groups)."""
    from lora_assets.core.split import SplitReport

    groups = (stats or {}).get("split_groups")
    line = SplitReport.model_validate(groups).line() if groups else None
    return [line] if line else []


def leakage_problems(measured: Measured) -> tuple[list[str], list[str]]:
    """(blocking, warnings) of the recorded leakage report under the thresholds it was built with."""
    return measured.leakage.problems(measured.leakage_thresholds)


def cell_rows(leakage: LeakageReport) -> Sequence[dict[str, Any]]:
    """Per persona × arc × topic diversity, lowest template rate first (for a metadata table)."""
    cells = sorted(leakage.cells, key=lambda c: (c.template_rate, c.persona, c.arc, c.topic))
    return [{"persona": c.persona, "arc": c.arc, "topic": c.topic, "conversations": c.conversations,
             "distinct_1": c.distinct_1, "distinct_2": c.distinct_2, "template_rate": round(c.template_rate, 4),
             "sentences": c.sentences} for c in cells]
