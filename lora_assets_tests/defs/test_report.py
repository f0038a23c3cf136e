"""Metadata tables a person reads in the UI."""

from lora_assets.defs.report import failures_markdown, md_table
from lora_assets.defs.training_files import coverage_matrix_md


def test_coverage_matrix_counts_conversations_and_topics_per_cell() -> None:
    rows = [
        {"persona_key": "a", "arc_key": "x", "topic_key": "t1"},
        {"persona_key": "a", "arc_key": "x", "topic_key": "t2"},
        {"persona_key": "b", "arc_key": "y", "topic_key": "t1"},
        {"persona_key": None, "arc_key": None, "topic_key": None},
    ]
    md = coverage_matrix_md(rows)
    assert "| persona \\ arc | (legacy) | x | y |" in md
    assert "| (legacy) | 1 (1t) | · | · |" in md
    assert "| a | · | 2 (2t) | · |" in md
    assert "| b | · | · | 1 (1t) |" in md


def test_md_table_escapes_pipes_and_newlines_and_reports_empty() -> None:
    assert md_table(["a"], [["x|y\nz"]]) == "| a |\n|---|\n| x\\|y z |"
    assert md_table(["a"], [], empty="Nothing.") == "Nothing."


def test_failures_markdown_truncates_with_a_count() -> None:
    failures = [{"id": f"i{n}", "position": n, "attempts": 1, "error": "timeout: x"} for n in range(60)]
    md = failures_markdown(failures, limit=50)
    assert md.count("timeout: x") == 50 and "… and 10 more." in md
