"""Audit a built training file from its JSONL alone: one streaming pass recomputes what the
file's metadata claims (pure; the Dagster checks compare the result with the DB row)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import IO, Any

from pydantic import BaseModel, Field, ValidationError

from lora_assets.core.aggregate import pair_scaffolding_keys, pairs_quality
from lora_assets.schemas import TrainingPair

_KINDS = ("personas", "emotional_arcs", "training_topics")


class JsonlAudit(BaseModel):
    """What a training file's JSONL really holds."""

    pairs: int = 0
    invalid_lines: list[str] = Field(default_factory=list)
    conversations: list[str] = Field(default_factory=list, description="Distinct ids, in file order.")
    repeated_conversations: list[str] = Field(default_factory=list)
    repeated_pair_ids: list[str] = Field(default_factory=list)
    quality: list[float] = Field(default_factory=list, description="Per scored conversation.")
    human_reviewed: int = 0
    distribution: dict[str, dict[str, int]] = Field(default_factory=dict)


def audit_jsonl(lines: Iterable[bytes]) -> JsonlAudit:
    """One pass over the JSONL lines: schema-validate each pair, and rebuild per conversation
    (a contiguous block of pairs) the figures the aggregate wrote, with the same rules."""
    audit = JsonlAudit()
    seen_pairs: set[str] = set()
    seen_convs: set[str] = set()
    distribution = {kind: Counter() for kind in _KINDS}
    block: list[TrainingPair] = []

    def close(block: list[TrainingPair]) -> None:
        if not block:
            return
        quality = pairs_quality(block)
        if quality is not None:
            audit.quality.append(quality)
        audit.human_reviewed += any(p.training_metadata.human_reviewed for p in block)
        for kind, key in zip(_KINDS, pair_scaffolding_keys(block[0]), strict=True):
            distribution[kind][key] += 1

    for number, line in enumerate(lines, start=1):
        try:
            pair = TrainingPair.model_validate_json(line)
        except ValidationError as exc:
            audit.invalid_lines.append(f"line {number}: {str(exc).splitlines()[0]}")
            continue
        audit.pairs += 1
        # A repeated pair id catches a duplicated block even right next to the original.
        if pair.id in seen_pairs:
            audit.repeated_pair_ids.append(pair.id)
            if pair.conversation_id not in audit.repeated_conversations:
                audit.repeated_conversations.append(pair.conversation_id)
        seen_pairs.add(pair.id)
        if block and block[-1].conversation_id == pair.conversation_id:
            block.append(pair)
            continue
        close(block)
        block = [pair]
        if pair.conversation_id in seen_convs:
            if pair.conversation_id not in audit.repeated_conversations:
                audit.repeated_conversations.append(pair.conversation_id)
        else:
            seen_convs.add(pair.conversation_id)
            audit.conversations.append(pair.conversation_id)
    close(block)
    audit.distribution = {kind: dict(sorted(c.items())) for kind, c in distribution.items()}
    return audit


def metadata_problems(audit: JsonlAudit, recorded: Mapping[str, Any]) -> list[str]:
    """Where the recorded metadata (a training_file_versions row) disagrees with the file."""
    problems: list[str] = []

    def expect(label: str, db_value: Any, actual: Any) -> None:
        if db_value != actual:
            problems.append(f"{label}: DB says {db_value!r}, file has {actual!r}")

    expect("total_training_pairs", recorded["total_training_pairs"], audit.pairs)
    expect("conversation_count", recorded["conversation_count"], len(audit.conversations))
    expect("human_reviewed_count", recorded["human_reviewed_count"], audit.human_reviewed)
    if audit.quality:
        avg = round(sum(audit.quality) / len(audit.quality), 2)
        for label, value in (("min_quality_score", min(audit.quality)), ("max_quality_score", max(audit.quality)),
                             ("avg_quality_score", avg)):
            # The DB column is NUMERIC(4,2): compare at that precision.
            if recorded[label] is None or abs(float(recorded[label]) - value) > 0.005:
                problems.append(f"{label}: DB says {recorded[label]}, file gives {value}")
    dist = recorded["scaffolding_distribution"] or {}
    for kind in _KINDS:
        expect(f"scaffolding_distribution.{kind}", dict(sorted((dist.get(kind) or {}).items())), audit.distribution[kind])
    return problems


def member_problems(
    audit: JsonlAudit, recorded_ids: Iterable[str], enrichment_status: Mapping[str, str | None]
) -> list[str]:
    """Seed rules on the built file: no conversation (or pair) twice, only conversations that are
    enriched (`enrichment_status` maps id -> status, None when the DB does not know it), and
    exactly the members the version recorded."""
    problems = [f"conversation {c} appears twice" for c in audit.repeated_conversations]
    problems += [f"training pair {p} appears twice" for p in audit.repeated_pair_ids]
    for cid in audit.conversations:
        status = enrichment_status.get(cid)
        if status is None:
            problems.append(f"conversation {cid} is not in the DB")
        elif status != "completed":
            problems.append(f"conversation {cid} is not enriched (enrichment_status={status})")
    if set(recorded_ids) != set(audit.conversations):
        problems.append("the version's recorded conversation ids differ from the file's")
    return problems


def parquet_split_sides(source: str | IO[bytes]) -> tuple[int, dict[str, set[str]]]:
    """Rows of a Parquet export, and the splits each conversation's rows are in (a seekable file
    or a path). Reads the two columns through `ParquetFile`: `pq.read_table` imports pandas,
    ≈ 0.3 s of CPU per check process, to read two string columns."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(source).read(columns=["conversation_id", "split"])
    sides: dict[str, set[str]] = {}
    for cid, side in zip(table.column("conversation_id").to_pylist(), table.column("split").to_pylist(), strict=True):
        sides.setdefault(cid, set()).add(side)
    return table.num_rows, sides
