"""Metadata tables a person reads in the UI."""

from lora_assets.core.text import md_cell
from lora_assets.defs.report import failures_table, md_table, problems_table
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


def test_md_cell_escapes_backslashes_and_pipes_and_flattens_whitespace() -> None:
    assert md_cell("a\\|b\r\n  c") == "a\\\\\\|b c"


def test_failures_table_is_typed_and_truncated() -> None:
    failures = [{"id": f"i{n}", "position": n, "attempts": 1, "error": "timeout: x"} for n in range(60)]
    table = failures_table(failures, limit=50)
    assert [c.name for c in table.schema.columns] == ["item", "position", "attempts", "reason"]
    assert [c.type for c in table.schema.columns] == ["string", "int", "int", "string"]
    assert len(table.records) == 50 and table.records[7].data == {"item": "i7", "position": 7, "attempts": 1,
                                                                   "reason": "timeout: x"}


def test_problems_table_names_each_subject() -> None:
    table = problems_table({"c1": ["no input_parameters", "bad persona"]})
    assert table.records[0].data == {"conversation": "c1", "problems": "no input_parameters; bad persona"}
    assert problems_table(["one", "two"]).records[1].data == {"problem": "two"}
