"""Markdown snippets for asset metadata (what a person reads in the Dagster UI)."""


from collections.abc import Iterable, Mapping
from typing import Any

from dagster import AssetCheckResult, MetadataValue


def md_table(headers: list[str], rows: Iterable[Iterable[Any]], empty: str = "None.") -> str:
    """A markdown table; cell text has pipes escaped and newlines flattened."""
    rows = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    if not rows:
        return empty
    head = "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
    return head + "\n".join("| " + " | ".join(r) + " |" for r in rows)


def items_markdown(progress: Mapping[str, Any]) -> str:
    """Items / parse / enrichment counts of a batch as one table."""
    rows = [("items", k, v) for k, v in progress["items"].items()]
    rows += [("parse", k, v) for k, v in progress["parse"].items()]
    rows += [("enrichment", k, v) for k, v in progress["enrichment"].items()]
    return md_table(["stage", "status", "count"], rows)


def failures_markdown(failures: list[Mapping[str, Any]], limit: int = 50) -> str:
    """Failed items with their reasons (first `limit`)."""
    text = md_table(
        ["item", "position", "attempts", "reason"],
        [(f["id"], f["position"], f["attempts"], f["error"]) for f in failures[:limit]],
        empty="No failures.",
    )
    if len(failures) > limit:
        text += f"\n\n… and {len(failures) - limit} more."
    return text


def problems_markdown(problems: Mapping[str, list[str]], limit: int = 50) -> str:
    """Per-conversation problems: conversation id → list of messages."""
    rows = [(cid, "; ".join(msgs)) for cid, msgs in list(problems.items())[:limit]]
    text = md_table(["conversation", "problems"], rows, empty="No problems.")
    if len(problems) > limit:
        text += f"\n\n… and {len(problems) - limit} more."
    return text


def conversation_check_result(problems: Mapping[str, list[str]], checked: int, summary: str,
                              extra: Mapping[str, Any] | None = None) -> AssetCheckResult:
    """A per-conversation check's result: passed when no conversation has a problem; metadata
    names each failing conversation and its problems. `summary` is formatted with {ok} and {n}."""
    return AssetCheckResult(
        passed=not problems,
        description=summary.format(ok=checked - len(problems), n=checked),
        metadata={"checked": checked, "failing": len(problems), "problems": MetadataValue.md(problems_markdown(problems)),
                  **(extra or {})},
    )
