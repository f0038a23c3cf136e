"""parsed_conversations: validated conversation JSON + input_parameters resolved from the DB."""

from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    asset,
    asset_check,
)

from lora_assets.core.parse import ParseError, json_loads, parse_conversation
from lora_assets.core.rules import client_persona_problems, input_parameter_problems
from lora_assets.defs import recorded_checks
from lora_assets.defs.conditions import after_upstream_lands
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.report import reasons_table
from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.schemas import ParsedConversation, ParseStatus, ResolvedScaffolding
from lora_assets.store import run_copies
from lora_assets.store.batches import batch_progress
from lora_assets.store.common import sibling_key

#: The checks of this stage, by name: computed on each conversation as it is parsed.
RULES: recorded_checks.Rules = {
    "input_parameters_complete": input_parameter_problems,
    "client_persona_matches": client_persona_problems,
}

@dataclass
class _Tally:
    parsed: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)


def parse_row(row: dict[str, Any], raw: bytes | BaseException, scaffolding: ResolvedScaffolding,
              run_id: str) -> tuple[dict[str, Any], bytes | None]:
    """One conversation row → (the row's update, conversation.json bytes or None when it failed).
    Any reason a row cannot be parsed (the raw file missing or unreadable included) is stored on
    the row as `kind: reason`; it never stops the other rows."""
    try:
        if isinstance(raw, BaseException):
            raise ParseError(row["id"], "unreadable", f"raw.json cannot be read ({type(raw).__name__}: {raw})")
        try:
            payload = json_loads(raw)
            response = payload["response"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ParseError(row["id"], "unreadable", f"raw.json is not a stored response ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from exc
        conversation = parse_conversation(response, conversation_id=row["id"], scaffolding=scaffolding,
                                          stop_reason=row["stop_reason"])
    except ParseError as exc:
        return {"id": row["id"], "parse_status": ParseStatus.FAILED, "parse_error": f"{exc.kind}: {exc.reason}"}, None
    return {
        "id": row["id"], "parse_status": ParseStatus.PARSED, "parse_error": None,
        "file_path": sibling_key(row["raw_response_path"], "conversation.json"),
        "turn_count": len(conversation.turns),
        "parse_checks": recorded_checks.findings(RULES, conversation, scaffolding, run_id),
    }, conversation.model_dump_json(indent=2).encode()


@asset(
    partitions_def=batch_jobs_partitions,
    deps=[AssetKey("raw_conversations")],
    group_name="generation",
    automation_condition=after_upstream_lands(),
    kinds={"python", "sql"},
)
def parsed_conversations(context: AssetExecutionContext, db: DomainDB, blobs: BlobStoreResource) -> MaterializeResult:
    """Parse every stored raw response of the batch not yet parsed (re-runs retry only failures,
    from the stored raw file; Claude is never called again). Adds `input_parameters` (10 fields)
    from the DB scaffolding, overrides client_persona, writes `conversation.json` and the row's
    `file_path`, and records what this stage's checks find on each conversation while it is in
    memory. One pass: raw files are read and conversation files written through a bounded pool,
    rows updated a chunk per transaction. A bad response is a stored, readable failure on its
    row, never a crash."""
    batch_id = db.batch_id(context.partition_key)
    engine = db.engine()
    tally = _Tally()
    run_id = context.run_id  # read once: each read of a context property goes through Dagster's checks
    for u in recorded_checks.stream_stage(
        engine=engine, blobs=blobs, batch_id=batch_id,
        row_filter={"parse_status": [ParseStatus.PENDING, ParseStatus.FAILED]}, read_column="raw_response_path",
        process=lambda row, raw, scaffolding: parse_row(row, raw, scaffolding, run_id),
        out_column="file_path",
        unstored=lambda cid, exc: {"id": cid, "parse_status": ParseStatus.FAILED, "parse_error":
                                   f"unstored: conversation.json could not be written ({type(exc).__name__}: {exc})"},
        keep=run_copies.for_run(run_id),  # for enrich, next in this run: it reads them from here
    ):
        if u["parse_status"] == ParseStatus.PARSED:
            tally.parsed += 1
        else:
            kind, _, reason = u["parse_error"].partition(": ")
            tally.failures.append((u["id"], kind, reason))
    with engine.connect() as conn:
        progress = batch_progress(conn, batch_id)
    return MaterializeResult(
        metadata={
            "parsed_this_run": tally.parsed,
            "failed_this_run": len(tally.failures),
            "parsed_total": progress["parse"][ParseStatus.PARSED],
            "failed_total": progress["parse"][ParseStatus.FAILED],
            "failures": reasons_table(tally.failures, "kind", "reason"),
        }
    )


def _parsed_check(context: Any, db: DomainDB, blobs: BlobStoreResource, name: str, summary: str) -> AssetCheckResult:
    return recorded_checks.verify(
        engine=db.engine(), blobs=blobs, batch_id=db.batch_id(context.partition_key), run_id=context.run.run_id,
        row_filter={"parse_status": ParseStatus.PARSED}, column="parse_checks", path_column="file_path",
        load=ParsedConversation.model_validate_json, what="conversation.json", rules=RULES, check_name=name,
        summary=summary, scaffolding=True,
    )


@asset_check(
    asset=parsed_conversations,
    partitions_def=batch_jobs_partitions,
    blocking=True,
    description="Every parsed conversation has input_parameters with all 10 fields populated, "
    "and they match the scaffolding its DB row names.",
)
def input_parameters_complete(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Bug spec Test Case 1: input_parameters present with 10 populated fields, from the DB.
    Reads what parsing recorded in this run; files another run wrote are read again."""
    return _parsed_check(context, db, blobs, "input_parameters_complete",
                         "{ok} of {n} parsed conversations have complete input_parameters")


@asset_check(
    asset=parsed_conversations,
    partitions_def=batch_jobs_partitions,
    blocking=True,
    description="client_persona equals '<persona name> - <archetype>' of the scaffolding persona.",
)
def client_persona_matches(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """The model's persona label is overridden by the DB persona: they must agree. Reads what
    parsing recorded in this run; files another run wrote are read again."""
    return _parsed_check(context, db, blobs, "client_persona_matches",
                         "{ok} of {n} conversations name their scaffolding persona")
