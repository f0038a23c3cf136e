"""The training-file audit: recomputed from the JSONL with the aggregate's own rules."""

import io

from lora_assets.core.aggregate import AggregateWriter
from lora_assets.core.audit import audit_jsonl, member_problems, metadata_problems, parquet_split_sides
from lora_assets_tests.core.test_aggregate import make_conversation


def _built(n: int = 3) -> tuple[bytes, dict]:
    out = io.BytesIO()
    writer = AggregateWriter(out)
    for i in range(n):
        writer.add(make_conversation(f"conv-{i}", quality=[3.0 + i * 0.4, 4.1, 3.7], human_reviewed=i == 1))
    stats = writer.stats
    qs = stats.quality_summary
    recorded = {
        "total_training_pairs": stats.total_training_pairs,
        "conversation_count": stats.conversation_count,
        "human_reviewed_count": qs.human_reviewed_count,
        "min_quality_score": qs.min_quality_score,
        "max_quality_score": qs.max_quality_score,
        "avg_quality_score": qs.avg_quality_score,
        "scaffolding_distribution": stats.scaffolding_distribution.model_dump(),
    }
    return out.getvalue(), recorded


def test_audit_of_a_fresh_aggregate_matches_its_stats() -> None:
    data, recorded = _built()
    audit = audit_jsonl(data.splitlines())
    assert metadata_problems(audit, recorded) == []
    assert member_problems(audit, audit.conversations, dict.fromkeys(audit.conversations, "completed")) == []


def test_audit_finds_a_dropped_line_a_repeated_block_and_a_bad_line() -> None:
    data, recorded = _built()
    lines = data.splitlines()
    dropped = audit_jsonl(lines[:-1])
    assert f"total_training_pairs: DB says {recorded['total_training_pairs']!r}, file has {len(lines) - 1!r}" in (
        metadata_problems(dropped, recorded)
    )
    last = [line for line in lines if line == lines[-1]]
    repeated = audit_jsonl(lines + last)  # the last pair again, right after its own block
    cid = repeated.conversations[-1]
    assert f"conversation {cid} appears twice" in member_problems(repeated, repeated.conversations, {})
    bad = audit_jsonl([lines[0], b'{"id": 1}'])
    assert bad.pairs == 1 and bad.invalid_lines and bad.invalid_lines[0].startswith("line 2:")


def test_member_problems_name_unenriched_and_unknown_conversations() -> None:
    data, _ = _built(2)
    audit = audit_jsonl(data.splitlines())
    first, second = audit.conversations
    problems = member_problems(audit, [first], {first: "failed"})
    assert f"conversation {first} is not enriched (enrichment_status=failed)" in problems
    assert f"conversation {second} is not in the DB" in problems
    assert "the version's recorded conversation ids differ from the file's" in problems


def test_parquet_split_sides_reads_rows_and_sides_without_pandas(tmp_path) -> None:  # noqa: ANN001
    """The exports check reads a Parquet export's two columns: its rows, and each conversation's
    sides (one that is on both shows two). Reading imports no pandas (`pq.read_table` does:
    ≈ 0.3 s per check process)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lora_assets.core.export import ExportWriter
    from lora_assets_tests.core.factories import modules_loaded_by

    path = tmp_path / "pairs.parquet"
    with path.open("wb") as fh:
        w = ExportWriter(parquet=fh, row_group_rows=2)
        w.add(make_conversation("a", pairs=3), "train")
        w.add(make_conversation("b", pairs=2), "validation")
        w.close()
    # A broken file the writer would refuse to make: one conversation on both sides.
    both = tmp_path / "both.parquet"
    pq.write_table(pa.table({"conversation_id": ["a", "a", "b"], "split": ["train", "validation", "train"]}), both)

    assert parquet_split_sides(path) == (5, {"a": {"train"}, "b": {"validation"}})
    assert parquet_split_sides(both) == (3, {"a": {"train", "validation"}, "b": {"train"}})
    code = f"from lora_assets.core.audit import parquet_split_sides; parquet_split_sides({str(path)!r})"
    assert modules_loaded_by(code, ("pandas",)) == []
