"""Human review of a training file's conversations through a CSV a person opens in a spreadsheet.

**Export** (`write_review_csv`): one row per conversation — its id, batch, scaffolding keys,
quality, Claude-judge scores, a readable transcript — then `row_check`, and the two columns the
reviewer fills in: `decision` (approve / reject / empty) and `notes`. Rows stream from an
iterator to a text handle (open it with ``newline=""``; ``encoding="utf-8-sig"`` makes Excel
read non-ASCII text correctly).

**Import** (`read_review_csv`): all or nothing. The whole file is parsed and checked first —
header, decision values, note length, each conversation at most once, `row_check` — and every bad
row is reported with its line number and reason in one `ReviewFileError`.

`row_check` guards the read-only columns: a 12-hex digest of all of them, then two hex digits per
column (a 1-byte digest of that column alone, in header order), so an edited read-only cell is
refused naming its column. It detects accidents, not forgery (anyone can recompute it). Numbers
are written in a short canonical form and compared after re-formatting, and line endings inside a
transcript are compared as "\\n", so a spreadsheet that re-saves the file unchanged passes.

CSV injection: a cell beginning with ``= + - @``, a tab, a carriage return or a quote char is
written with a leading ``'`` so no spreadsheet runs it as a formula; import removes exactly that
one quote again (hence a leading ``'`` is itself escaped: the round trip is exact).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_assets.core.judge import JudgeScores

#: Per-criterion judge score columns (`judge_<criterion>`), in `JudgeScores` order.
JUDGE_CRITERIA: tuple[str, ...] = tuple(name for name in JudgeScores.model_fields if name != "rationale")
#: Longest note accepted on import, in characters.
MAX_NOTES = 2000
#: Data rows one import reads (the header and blank lines not counted); the CLI passes
#: LORA_MAX_REVIEW_ROWS. Reading stops at the first row over it.
MAX_ROWS = 50_000
#: Longest physical line read: a row's fields are split from its lines, so this bounds the fields
#: (and memory) of one row; a transcript's lines are far shorter.
MAX_LINE_CHARS = 1_048_576
#: Problems a refusal lists; the rest are counted, not kept (LORA_MAX_VALIDATION_LINES in the CLI).
MAX_PROBLEMS = 200
#: Accepted decisions (compared case-insensitively after trimming); empty means undecided.
DECISIONS = ("approve", "reject")

_ROLE_LABEL = {"system": "SYSTEM", "user": "CLIENT", "assistant": "ADVISOR"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_LEAD_COLUMNS = ("conversation_id", "batch", "persona", "arc", "topic", "quality", "judge_overall")
_NUMERIC_PREFIXES = ("quality", "judge_")
_EDITABLE = ("decision", "notes")


class ReviewFileError(ValueError):
    """A review CSV that cannot be imported; `problems` lists the bad lines with their reasons
    (the first ones, when there were more than the cap: `more` counts the rest)."""

    def __init__(self, problems: Sequence[str], more: int = 0) -> None:
        self.problems, self.more = list(problems), more
        lines = [*self.problems, *([f"… and {more:,} more problem(s) not listed"] if more else [])]
        super().__init__(f"review file refused, {self.total:,} problem(s):\n" + "\n".join(lines))

    @property
    def total(self) -> int:
        """Every problem found, listed or not."""
        return len(self.problems) + self.more


class ReviewRowLimitError(ReviewFileError):
    """A review CSV with more data rows than the import reads; raised at the first row over it,
    before the rest of the file is read."""

    def __init__(self, limit: int, line: int) -> None:
        self.limit, self.line = limit, line
        super().__init__([f"line {line}: more than {limit:,} rows, over the limit of {limit:,} rows per import"])


class _Problems(list):
    """The first `cap` problems, and a count of the ones after them (memory stays bounded)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap, self.more = cap, 0

    def add(self, problem: str) -> None:
        if len(self) < self.cap:
            self.append(problem)
        else:
            self.more += 1


class ReviewRow(BaseModel):
    """One conversation as the reviewer sees it (the read-only part of a CSV row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_id: str = Field(min_length=1)
    batch: str = ""
    persona: str | None = None
    arc: str | None = None
    topic: str | None = None
    quality: float | None = None
    judge_overall: float | None = None
    judge_scores: dict[str, float] = Field(default_factory=dict, description="Per-criterion scores present.")
    transcript: str


class ReviewDecision(BaseModel):
    """A reviewer's verdict on one conversation; `decision` None means the row was left undecided."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_id: str
    decision: Literal["approve", "reject"] | None
    notes: str = ""
    line: int = Field(ge=2, description="Line of the CSV the row starts on (the header is line 1).")


def review_header(criteria: Sequence[str] = JUDGE_CRITERIA) -> list[str]:
    """Column names of the review CSV."""
    return [*_LEAD_COLUMNS, *(f"judge_{c}" for c in criteria), "transcript", "row_check", *_EDITABLE]


def transcript(messages: Iterable[Mapping[str, str]]) -> str:
    """A readable transcript: each message prefixed with its role (SYSTEM / CLIENT / ADVISOR),
    messages separated by a blank line."""
    return "\n\n".join(f"{_ROLE_LABEL.get(m['role'], m['role'].upper())}: {m['content'].strip()}" for m in messages)


def _number(value: float | None) -> str:
    # Short and canonical (4 decimals at most, no trailing zeros): what a spreadsheet writes back.
    if value is None:
        return ""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _canonical(column: str, value: str) -> str:
    """The value as compared by row_check (raises ValueError for a numeric column that isn't)."""
    if column.startswith(_NUMERIC_PREFIXES):
        return _number(float(value)) if value.strip() else ""
    if column == "transcript":
        return value.replace("\r\n", "\n").replace("\r", "\n")
    return value


def _digest(data: str, size: int) -> str:
    return hashlib.blake2b(data.encode(), digest_size=size).hexdigest()


def row_check(values: Mapping[str, str], columns: Sequence[str]) -> str:
    """The check of the read-only `columns` of a row (their canonical text values)."""
    canonical = [_canonical(c, values[c]) for c in columns]
    overall = _digest(json.dumps(canonical, ensure_ascii=False), 6)
    per_column = "".join(_digest(json.dumps([c, v], ensure_ascii=False), 1) for c, v in zip(columns, canonical, strict=True))
    return f"{overall}.{per_column}"


def _escape(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def _unescape(value: str) -> str:
    return value[1:] if value.startswith("'") else value


def write_review_csv(rows: Iterable[ReviewRow], handle: IO[str], *, criteria: Sequence[str] = JUDGE_CRITERIA) -> int:
    """Write the header and one row per conversation to `handle`, streaming; returns the rows written."""
    header = review_header(criteria)
    readonly = header[: header.index("row_check")]
    writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(header)
    written = 0
    for row in rows:
        values = {
            "conversation_id": row.conversation_id,
            "batch": row.batch,
            "persona": row.persona or "",
            "arc": row.arc or "",
            "topic": row.topic or "",
            "quality": _number(row.quality),
            "judge_overall": _number(row.judge_overall),
            **{f"judge_{c}": _number(row.judge_scores.get(c)) for c in criteria},
            "transcript": row.transcript,
        }
        check = row_check(values, readonly)
        writer.writerow([_escape(values[c]) for c in readonly] + [check, "", ""])
        written += 1
    return written


def read_review_csv(
    handle: IO[str], *, criteria: Sequence[str] = JUDGE_CRITERIA, max_notes: int = MAX_NOTES,
    max_rows: int = MAX_ROWS, max_problems: int = MAX_PROBLEMS,
) -> list[ReviewDecision]:
    """Parse and validate a whole review CSV, then return one `ReviewDecision` per row (in file
    order, undecided rows included). Raises `ReviewFileError` listing the first `max_problems`
    problems and counting the rest — nothing is returned unless the whole file is valid — or
    `ReviewRowLimitError` at the first data row past `max_rows` (the rest is not read)."""
    header = review_header(criteria)
    readonly = header[: header.index("row_check")]
    reader = csv.reader(_bounded_lines(handle, MAX_LINE_CHARS), strict=True)
    problems = _Problems(max_problems)
    rows = 0
    try:
        found = next(reader, None)
    except csv.Error as exc:
        raise ReviewFileError([f"line 1: not readable as CSV ({exc})"]) from exc
    if found:
        found[0] = found[0].removeprefix("\ufeff")  # Excel's "CSV UTF-8" adds a BOM
    if found and not set(found) & set(header):
        # Not a review export at all (a wrong file, a symlink to something else): its first line
        # is not echoed, only its shape.
        raise ReviewFileError([f"line 1: not a review export: none of its {len(found)} column(s) is one of the "
                               f"export's; expected: {','.join(header)}"])
    if found != header:
        missing = [c for c in header if c not in (found or [])]
        extra = [c if len(c) <= 40 else c[:39] + "…" for c in (found or []) if c not in header][:5]
        detail = "; ".join(
            part for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
                "columns out of order" if not missing and not extra else "",
            ) if part
        )
        raise ReviewFileError([f"line 1: header does not match the review export ({detail}); expected: {','.join(header)}"])

    decisions: list[ReviewDecision] = []
    first_line: dict[str, int] = {}
    line_end = reader.line_num
    while True:
        start = line_end + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.add(f"line {start}: not readable as CSV ({exc})")
            break
        line_end = reader.line_num
        if not any(f.strip() for f in fields):
            continue  # blank line (spreadsheets like to add them at the end)
        rows += 1
        if rows > max_rows:
            raise ReviewRowLimitError(max_rows, start)
        if len(fields) != len(header):
            problems.add(f"line {start}: {len(fields)} columns, expected {len(header)}")
            continue
        values = {c: _unescape(v) for c, v in zip(header, fields, strict=True)}
        reasons: list[str] = []

        cid = values["conversation_id"].strip()
        if not cid:
            reasons.append("conversation_id is empty")
        elif cid in first_line:
            reasons.append(f"conversation {cid!r} appears more than once (first on line {first_line[cid]})")
        else:
            first_line[cid] = start

        decision = values["decision"].strip().lower()
        if decision not in ("", *DECISIONS):
            reasons.append(f"column 'decision' is {values['decision']!r}: must be approve, reject or empty")
        notes = values["notes"].strip()
        if len(notes) > max_notes:
            reasons.append(f"column 'notes' has {len(notes)} characters (at most {max_notes})")

        reasons += _check_row(values, readonly)
        if reasons:
            for reason in reasons:
                problems.add(f"line {start}: {reason}")
            continue
        decisions.append(
            ReviewDecision(conversation_id=cid, decision=decision or None, notes=notes, line=start)  # type: ignore[arg-type]
        )
    if problems:
        raise ReviewFileError(problems, problems.more)
    return decisions


def _bounded_lines(handle: IO[str], limit: int) -> Iterator[str]:
    """The lines of `handle`, refusing (ReviewFileError naming the line) one longer than `limit`
    characters before it is split: a line of a million commas would otherwise become a row of a
    million fields."""
    number = 0
    while line := handle.readline(limit + 1):
        number += 1
        if len(line) > limit and not line.endswith("\n"):
            raise ReviewFileError([f"line {number}: longer than {limit:,} characters (not a review export row)"])
        yield line


def _check_row(values: Mapping[str, str], readonly: Sequence[str]) -> list[str]:
    """Why the read-only columns of a row do not match its row_check (empty when they do)."""
    bad_numbers = []
    for column in readonly:
        try:
            _canonical(column, values[column])
        except ValueError:
            bad_numbers.append(f"column {column!r} is {values[column]!r}, not a number")
    if bad_numbers:
        return bad_numbers
    given = values["row_check"].strip()
    expected = row_check(values, readonly)
    if given == expected:
        return []
    overall, _, per_column = given.partition(".")
    if len(overall) != 12 or len(per_column) != 2 * len(readonly):
        return ["column 'row_check' was edited or is malformed"]
    _, _, expected_columns = expected.partition(".")
    changed = [c for i, c in enumerate(readonly) if per_column[2 * i : 2 * i + 2] != expected_columns[2 * i : 2 * i + 2]]
    if changed:
        return [f"read-only column {c!r} was edited (row_check does not match)" for c in changed]
    return ["a read-only column was edited (row_check does not match)"]
