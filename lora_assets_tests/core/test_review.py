"""Human review CSV: export, edit, import (all or nothing), tamper and injection safety."""

from __future__ import annotations

import csv
import io

import pytest

from lora_assets.core.review import (
    JUDGE_CRITERIA,
    ReviewDecision,
    ReviewFileError,
    ReviewRow,
    ReviewRowLimitError,
    read_review_csv,
    review_header,
    transcript,
    write_review_csv,
)

MESSAGES = [
    {"role": "system", "content": "You are Elena, a planner."},
    {"role": "user", "content": "Should I pay off my mortgage?"},
    {"role": "assistant", "content": "It makes sense to feel unsure.\nLet us look at the rate."},
]


def _rows() -> list[ReviewRow]:
    return [
        ReviewRow(
            conversation_id="c1", batch="b-1", persona="pragmatic_optimist", arc="confusion_to_clarity",
            topic="mortgage_payoff_strategy", quality=4.25, judge_overall=4.1,
            judge_scores={"empathy_score": 4.5, "clarity_score": 4.0}, transcript=transcript(MESSAGES),
        ),
        ReviewRow(conversation_id="c2", batch="b-1", persona=None, quality=3.0, transcript=transcript(MESSAGES[1:])),
        ReviewRow(conversation_id="c3", batch="b-2", persona="anxious_planner", quality=None,
                  transcript="=HYPERLINK(\"http://evil.example\",\"click\")"),
    ]


def _export(rows: list[ReviewRow] | None = None) -> str:
    buf = io.StringIO(newline="")
    assert write_review_csv(iter(rows if rows is not None else _rows()), buf) == len(rows if rows is not None else _rows())
    return buf.getvalue()


def _table(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _untable(table: list[list[str]]) -> str:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(table)
    return buf.getvalue()


def _edit(text: str, conversation_id: str, **changes: str) -> str:
    table = _table(text)
    header = table[0]
    for row in table[1:]:
        if row[0] == conversation_id:
            for column, value in changes.items():
                row[header.index(column)] = value
    return _untable(table)


def _import(text: str) -> list[ReviewDecision]:
    return read_review_csv(io.StringIO(text, newline=""))


def test_transcript_prefixes_roles_and_separates_turns() -> None:
    assert transcript(MESSAGES) == (
        "SYSTEM: You are Elena, a planner.\n\nCLIENT: Should I pay off my mortgage?\n\n"
        "ADVISOR: It makes sense to feel unsure.\nLet us look at the rate."
    )


def test_export_columns_and_values() -> None:
    table = _table(_export())
    header = table[0]
    assert header == review_header()
    assert header[:7] == ["conversation_id", "batch", "persona", "arc", "topic", "quality", "judge_overall"]
    assert [h for h in header if h.startswith("judge_") and h != "judge_overall"] == [f"judge_{c}" for c in JUDGE_CRITERIA]
    assert header[-3:] == ["row_check", "decision", "notes"]
    c1 = dict(zip(header, table[1], strict=True))
    assert c1["quality"] == "4.25" and c1["judge_overall"] == "4.1"
    assert c1["judge_empathy_score"] == "4.5" and c1["judge_clarity_score"] == "4"
    assert c1["judge_brand_voice_alignment"] == ""  # criterion not present
    assert c1["transcript"].startswith("SYSTEM: ") and "\n\nADVISOR: " in c1["transcript"]
    assert c1["decision"] == c1["notes"] == ""
    assert len(c1["row_check"]) == 12 + 1 + 2 * header.index("row_check")
    c2 = dict(zip(header, table[2], strict=True))
    assert c2["persona"] == "" and c2["quality"] == "3"


def test_round_trip_export_edit_import() -> None:
    text = _export()
    text = _edit(text, "c1", decision=" Approve ", notes="Warm and precise.")
    text = _edit(text, "c3", decision="REJECT", notes="=looks like a formula")
    decisions = _import(text)
    assert decisions == [
        ReviewDecision(conversation_id="c1", decision="approve", notes="Warm and precise.", line=2),
        ReviewDecision(conversation_id="c2", decision=None, notes="", line=decisions[1].line),
        ReviewDecision(conversation_id="c3", decision="reject", notes="=looks like a formula", line=decisions[2].line),
    ]
    # Multi-line transcripts: each row is named by the line it starts on.
    assert decisions[1].line == 2 + _rows()[0].transcript.count("\n") + 1


def test_csv_injection_escaped_and_undone() -> None:
    text = _export()
    raw = _table(text)
    header = raw[0]
    c3 = dict(zip(header, raw[3], strict=True))
    # In the file, the formula is text: a leading quote char, so no spreadsheet evaluates it.
    assert c3["transcript"] == "'=HYPERLINK(\"http://evil.example\",\"click\")"
    for row in raw[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    # A value that itself starts with a quote char survives the round trip exactly.
    rows = [ReviewRow(conversation_id="'quoted", transcript="'=1+1"), ReviewRow(conversation_id="@x", transcript="+1")]
    decisions = _import(_export(rows))
    assert [d.conversation_id for d in decisions] == ["'quoted", "@x"]


def test_resaved_by_a_spreadsheet_still_imports() -> None:
    """CRLF inside transcripts, numbers re-formatted, a BOM and a trailing blank line."""
    text = _export()
    table = _table(text)
    header = table[0]
    table[1][header.index("quality")] = "4.250"
    table[1][header.index("transcript")] = table[1][header.index("transcript")].replace("\n", "\r\n")
    resaved = "\ufeff" + _untable(table) + "\r\n"
    assert [d.conversation_id for d in _import(resaved)] == ["c1", "c2", "c3"]


def test_tampered_row_refused_naming_line_and_column() -> None:
    text = _edit(_export(), "c2", quality="4.9", decision="approve")
    with pytest.raises(ReviewFileError) as err:
        _import(text)
    line = 2 + _rows()[0].transcript.count("\n") + 1
    assert err.value.problems == [f"line {line}: read-only column 'quality' was edited (row_check does not match)"]
    assert f"line {line}" in str(err.value)

    transcript_edit = _edit(_export(), "c1", transcript="ADVISOR: something else entirely")
    with pytest.raises(ReviewFileError, match=r"line 2: read-only column 'transcript' was edited"):
        _import(transcript_edit)
    with pytest.raises(ReviewFileError, match=r"line 2: column 'row_check' was edited or is malformed"):
        _import(_edit(_export(), "c1", row_check="abc"))
    with pytest.raises(ReviewFileError, match=r"line 2: column 'quality' is 'high', not a number"):
        _import(_edit(_export(), "c1", quality="high"))


def test_all_problems_reported_at_once_and_nothing_returned() -> None:
    text = _export(
        [ReviewRow(conversation_id="c1", transcript="a"), ReviewRow(conversation_id="c2", transcript="b"),
         ReviewRow(conversation_id="c3", transcript="c")]
    )
    text = _edit(text, "c1", decision="maybe")
    text = _edit(text, "c2", notes="x" * 2001)
    table = _table(text)
    table.append(list(table[3]))  # c3 again: a duplicate id
    with pytest.raises(ReviewFileError) as err:
        _import(_untable(table))
    assert err.value.problems == [
        "line 2: column 'decision' is 'maybe': must be approve, reject or empty",
        "line 3: column 'notes' has 2001 characters (at most 2000)",
        "line 5: conversation 'c3' appears more than once (first on line 4)",
    ]


def test_problem_list_is_capped_with_a_count_of_the_rest() -> None:
    table = _table(_export([ReviewRow(conversation_id=f"c{i}", transcript="t") for i in range(10)]))
    for row in table[1:]:
        row[table[0].index("decision")] = "maybe"
    with pytest.raises(ReviewFileError) as err:
        read_review_csv(io.StringIO(_untable(table), newline=""), max_problems=3)
    assert len(err.value.problems) == 3 and err.value.more == 7 and err.value.total == 10
    assert str(err.value).endswith("… and 7 more problem(s) not listed")


def test_reading_stops_at_the_first_row_over_the_row_limit() -> None:
    text = _export([ReviewRow(conversation_id=f"c{i}", transcript="t") for i in range(5)])
    handle = io.StringIO(text + "this line is never parsed\n" * 1000, newline="")
    with pytest.raises(ReviewRowLimitError, match="line 5: more than 3 rows, over the limit of 3 rows") as err:
        read_review_csv(handle, max_rows=3)
    assert err.value.limit == 3
    assert handle.tell() < len(text)  # the rest of the file was not read
    assert len(read_review_csv(io.StringIO(text, newline=""), max_rows=5)) == 5


def test_a_line_of_a_million_commas_is_refused_before_it_is_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import lora_assets.core.review as review

    monkeypatch.setattr(review, "MAX_LINE_CHARS", 10_000)
    text = _export() + "," * 50_000 + "\r\n"
    with pytest.raises(ReviewFileError, match=r"line \d+: longer than 10,000 characters"):
        _import(text)
    assert len(_import(_export())) == 3  # real rows and their transcripts' lines pass


def test_duplicate_conversation_refused() -> None:
    table = _table(_export())
    table.insert(2, list(table[1]))
    with pytest.raises(ReviewFileError, match="conversation 'c1' appears more than once"):
        _import(_untable(table))


def test_wrong_header_refused() -> None:
    table = _table(_export())
    table[0][table[0].index("notes")] = "comments"
    with pytest.raises(ReviewFileError, match=r"line 1: header does not match .*missing notes; unexpected comments"):
        _import(_untable(table))
    swapped = _table(_export())
    swapped[0][-1], swapped[0][-2] = swapped[0][-2], swapped[0][-1]
    with pytest.raises(ReviewFileError, match="columns out of order"):
        _import(_untable(swapped))
    with pytest.raises(ReviewFileError, match="line 1"):
        _import("")
    secret = "root:$6$s3cr3t-hash:19000:0:99999:7:::"
    with pytest.raises(ReviewFileError, match="line 1: not a review export: none of its 1 column") as err:
        _import(secret + "\n")  # e.g. a symlink to /etc/shadow: its content is never echoed
    assert "s3cr3t" not in str(err.value)


def test_wrong_column_count_refused() -> None:
    table = _table(_export())
    table[1] = table[1][:-1]
    with pytest.raises(ReviewFileError, match=r"line 2: \d+ columns, expected \d+"):
        _import(_untable(table))
