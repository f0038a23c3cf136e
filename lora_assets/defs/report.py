"""Metadata a person reads in the Dagster UI: tables (sortable, filterable) and the one
per-conversation check result."""


from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    TableColumn,
    TableMetadataValue,
    TableRecord,
    TableSchema,
)

from lora_assets.core.text import md_cell

#: Rows a table shows at most; the full count is always in its own metadata entry.
TABLE_LIMIT = 50

_TYPES = {int: "int", float: "float", bool: "bool", str: "string"}


def md_table(headers: list[str], rows: Iterable[Iterable[Any]], empty: str = "None.") -> str:
    """A markdown table (for text that is not a plain table, e.g. a matrix with a caption);
    cell text escaped by `md_cell`."""
    rows = [[md_cell(c) for c in r] for r in rows]
    if not rows:
        return empty
    head = "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
    return head + "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _cell(value: Any) -> Any:
    """A table cell: numbers, booleans and None as they are, anything else as text."""
    return value if value is None or isinstance(value, (int, float, bool, str)) else str(value)


def table(columns: Mapping[str, type], rows: Iterable[Sequence[Any]], limit: int = TABLE_LIMIT) -> TableMetadataValue:
    """A metadata table with typed `columns` (name -> int/float/bool/str), first `limit` rows."""
    names = list(columns)
    records = [TableRecord(data={n: _cell(v) for n, v in zip(names, row, strict=True)})
               for row, _ in zip(rows, range(limit))]
    schema = TableSchema(columns=[TableColumn(name=n, type=_TYPES[t]) for n, t in columns.items()])
    return MetadataValue.table(records=records, schema=schema)


def items_table(progress: Mapping[str, Any]) -> TableMetadataValue:
    """Items / parse / enrichment counts of a batch as one table."""
    rows = [(stage, status, count) for stage in ("items", "parse", "enrichment")
            for status, count in progress[stage].items()]
    return table({"stage": str, "status": str, "count": int}, rows)


def failures_table(failures: Sequence[Mapping[str, Any]], limit: int = TABLE_LIMIT) -> TableMetadataValue:
    """Failed items with their reasons (first `limit`; the count is reported next to it)."""
    return table({"item": str, "position": int, "attempts": int, "reason": str},
                 ((f["id"], f["position"], f["attempts"], f["error"]) for f in failures), limit)


def reasons_table(failures: Iterable[Sequence[Any]], *columns: str) -> TableMetadataValue:
    """Conversations that failed a stage: (conversation, *columns) tuples, all text."""
    return table(dict.fromkeys(["conversation", *columns], str), failures)


def problems_table(problems: Mapping[str, list[str]] | Sequence[str], subject: str = "conversation",
                   limit: int = TABLE_LIMIT) -> TableMetadataValue:
    """Problems as a table: `subject` (e.g. a conversation id) → its messages joined, or a plain
    list of messages."""
    if isinstance(problems, Mapping):
        return table({subject: str, "problems": str}, ((k, "; ".join(m)) for k, m in problems.items()), limit)
    return table({"problem": str}, ((p,) for p in problems), limit)


def check_result(problems: Mapping[str, list[str]] | Sequence[str], description: str,
                 metadata: Mapping[str, Any] | None = None,
                 severity: AssetCheckSeverity = AssetCheckSeverity.ERROR, subject: str = "conversation") -> AssetCheckResult:
    """The one check-result helper of the defs: passed when there is no problem; metadata has
    `failing` (how many) and `problems` (a table naming each, first TABLE_LIMIT), plus `metadata`."""
    return AssetCheckResult(
        passed=not problems,
        severity=severity,
        description=description,
        metadata={**(metadata or {}), "failing": len(problems), "problems": problems_table(problems, subject)},
    )


def conversation_check_result(problems: Mapping[str, list[str]], checked: int, summary: str,
                              extra: Mapping[str, Any] | None = None) -> AssetCheckResult:
    """A per-conversation check over `checked` conversations (`check_result` with the count);
    `summary` is formatted with {ok} and {n}."""
    return check_result(problems, summary.format(ok=checked - len(problems), n=checked),
                        {"checked": checked, **(extra or {})})
