"""enriched_conversations: v4.0 per-conversation training pairs, automatically after parsing."""


from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    asset_check,
)
from pydantic import Field

from lora_assets.core import enrich as enrich_core
from lora_assets.core.enrich import EnrichError, enrich_conversation
from lora_assets.core.aggregate import conversation_quality
from lora_assets.core.rules import (
    client_background_problems,
    enriched_input_parameter_problems,
    pair_scaffolding_problems,
)
from lora_assets.defs import recorded_checks
from lora_assets.defs.conditions import after_upstream_lands
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.report import reasons_table
from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.schemas import (
    ConsultantProfile,
    EnrichedConversation,
    EnrichmentStatus,
    ParsedConversation,
    ParseStatus,
    ResolvedScaffolding,
)
from lora_assets.store import run_copies
from lora_assets.store.batches import batch_progress, get_batch
from lora_assets.store.common import sibling_key
from lora_assets.store.conversations import batch_conversations
from lora_assets.store.scaffolding import batch_consultant
from lora_assets.store.training_files import not_enriched_reason, training_files_holding_batch

#: The file-reading checks of this stage, by name: computed on each conversation as it is enriched.
RULES: recorded_checks.Rules = {
    "enriched_has_input_parameters": lambda doc, _: enriched_input_parameter_problems(doc),
    "training_pairs_have_scaffolding": lambda doc, _: pair_scaffolding_problems(doc),
    "client_background_readable": lambda doc, _: client_background_problems(doc),
}

class EnrichConfig(Config):
    """Run config of `enriched_conversations` (defaults: what the eager automation runs)."""

    re_enrich: bool = Field(
        default=False,
        description="Re-enrich EVERY parsed conversation of the batch from its stored parsed file, also those "
        "already enriched (after the enrichment logic changed: core.enrich.ENRICHMENT_VERSION). No Claude "
        "request; scaffolding from the conversation's stored snapshot. Training files holding them are stale "
        "until rebuilt (listed in the metadata).",
    )


@dataclass
class _Tally:
    done: int = 0
    pairs: int = 0
    scored: int = 0
    score_sum: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)


def enrich_row(row: dict[str, Any], data: bytes | BaseException, snapshot: ResolvedScaffolding,
               consultant: ConsultantProfile, created_date: str, run_id: str) -> tuple[dict[str, Any], bytes | None]:
    """One parsed conversation row → (the row's update, enriched.json bytes or None when it
    failed). Any reason (the parsed file missing or invalid included) is stored on the row."""
    try:
        if isinstance(data, BaseException):
            raise ValueError(f"conversation.json cannot be read ({type(data).__name__}: {data})")
        parsed = ParsedConversation.model_validate_json(data)
        persona = topic = None
        if parsed.input_parameters is not None:
            # As planned: the row's scaffolding snapshot, not today's rows.
            if snapshot.persona.id == parsed.input_parameters.persona_id:
                persona = snapshot.persona
            if snapshot.training_topic.id == parsed.input_parameters.training_topic_id:
                topic = snapshot.training_topic
        enriched = enrich_conversation(parsed, conversation_id=row["id"], consultant=consultant, persona=persona,
                                       training_topic=topic, created_date=created_date)
    except (EnrichError, ValueError) as exc:
        return {"id": row["id"], "enrichment_status": EnrichmentStatus.FAILED, "enrichment_error": str(exc)}, None
    return {
        "id": row["id"], "enrichment_status": EnrichmentStatus.COMPLETED, "enrichment_error": None,
        "enriched_file_path": sibling_key(row["file_path"], "enriched.json"),
        "training_pair_count": len(enriched.training_pairs),
        "quality_score": conversation_quality(enriched),
        "enrichment_checks": recorded_checks.findings(RULES, enriched, None, run_id),
        "enrichment_version": enriched.dataset_metadata.enrichment_version,
    }, enriched.model_dump_json(indent=2).encode()


@asset(
    partitions_def=batch_jobs_partitions,
    deps=[AssetKey("parsed_conversations")],
    group_name="generation",
    automation_condition=after_upstream_lands(),
    kinds={"python", "sql"},
)
def enriched_conversations(context: AssetExecutionContext, config: EnrichConfig, db: DomainDB,
                           blobs: BlobStoreResource) -> MaterializeResult:
    """Enrich every parsed conversation of the batch not yet enriched into the v4.0 individual
    JSON (one training pair per user turn, 5 scaffolding fields per pair, readable
    client_background, quality scores). Writes `enriched.json`, `enriched_file_path` and
    `enrichment_status = completed`, and records what this stage's checks find on each
    conversation while it is in memory; failures are stored with their reason and retried from
    the stored parsed file on the next run. One pass through a bounded blob pool, rows updated a
    chunk per transaction. Runs on its own after parsing (eager automation).

    With `re_enrich` (run config) every parsed conversation is enriched again from its stored
    parsed file, overwriting enriched.json and its row (`enrichment_version` included); the
    metadata lists the training files holding them, stale until their next build."""
    batch_id = db.batch_id(context.partition_key)
    engine = db.engine()
    with engine.connect() as conn:
        # As planned: the batch's consultant, not today's row.
        consultant = batch_consultant(conn, get_batch(conn, batch_id) or {})
    created_date = datetime.now(UTC).date().isoformat()
    tally = _Tally()
    todo: dict[str, Any] = {"parse_status": ParseStatus.PARSED}
    if not config.re_enrich:
        todo["enrichment_status"] = [EnrichmentStatus.NOT_STARTED, EnrichmentStatus.FAILED,
                                     EnrichmentStatus.IN_PROGRESS]
    run_id = context.run_id  # read once: each read of a context property goes through Dagster's checks
    # What parse wrote earlier in this run, in this process, is read from its local copies.
    copies = run_copies.of_run(run_id)
    try:
        for u in recorded_checks.stream_stage(
            engine=engine, blobs=blobs, batch_id=batch_id, row_filter=todo, read_column="file_path",
            process=lambda row, data, snapshot: enrich_row(row, data, snapshot, consultant, created_date, run_id),
            out_column="enriched_file_path",
            unstored=lambda cid, exc: {"id": cid, "enrichment_status": EnrichmentStatus.FAILED, "enrichment_error":
                                       f"enriched.json could not be written ({type(exc).__name__}: {exc})"},
            copies=copies,
        ):
            if u["enrichment_status"] == EnrichmentStatus.COMPLETED:
                tally.done += 1
                tally.pairs += u["training_pair_count"]
                if u["quality_score"] is not None:  # None: no answered pair, nothing to score
                    tally.scored += 1
                    tally.score_sum += u["quality_score"]
            else:
                tally.failures.append((u["id"], u["enrichment_error"]))
    finally:
        run_copies.release(run_id)
    with engine.connect() as conn:
        progress = batch_progress(conn, batch_id)
        # Only a re-enrichment rewrites files a training file may already hold.
        stale = training_files_holding_batch(conn, batch_id) if config.re_enrich else []
    return MaterializeResult(
        metadata={
            "re_enrich": config.re_enrich,
            "enrichment_version": enrich_core.ENRICHMENT_VERSION,
            **({"stale_training_files": _stale_table(stale)} if config.re_enrich else {}),
            "enriched_this_run": tally.done,
            # Parsed files read from the copies parse kept in this run, not from the store.
            "read_from_this_runs_parse": copies.hits if copies is not None else 0,
            "failed_this_run": len(tally.failures),
            "training_pairs_this_run": tally.pairs,
            "enriched_total": progress["enrichment"][EnrichmentStatus.COMPLETED],
            "avg_quality_this_run": round(tally.score_sum / tally.scored, 3) if tally.scored else None,
            "failures": reasons_table(tally.failures, "reason"),
        }
    )


def _stale_table(rows: list[dict[str, Any]]) -> MetadataValue:
    """Training files holding re-enriched conversations: stale until rebuilt (their next build
    reads the current enriched files)."""
    return MetadataValue.table(
        records=[TableRecord(data={"training_file": r["name"], "current_version": r["current_version"],
                                   "members_from_this_batch": r["members"],
                                   "status": "stale until rebuilt"}) for r in rows],
        schema=TableSchema(columns=[TableColumn("training_file", "string"), TableColumn("current_version", "int"),
                                    TableColumn("members_from_this_batch", "int"), TableColumn("status", "string")]),
    )


def _enriched_check(context: Any, db: DomainDB, blobs: BlobStoreResource, name: str, what: str) -> AssetCheckResult:
    """`name` over every enriched conversation of the partition: from this run's records, and
    from the file for conversations another run enriched."""
    return recorded_checks.verify(
        engine=db.engine(), blobs=blobs, batch_id=db.batch_id(context.partition_key), run_id=context.run.run_id,
        row_filter={"enrichment_status": EnrichmentStatus.COMPLETED}, column="enrichment_checks",
        path_column="enriched_file_path", load=EnrichedConversation.model_validate_json, what="enriched.json",
        rules=RULES, check_name=name, summary="{ok} of {n} enriched conversations: " + what, scaffolding=False,
    )


@asset_check(asset=enriched_conversations, partitions_def=batch_jobs_partitions, blocking=True,
             description="enriched.json has input_parameters (copied from the parsed conversation).")
def enriched_has_input_parameters(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Bug spec Test Case 2: input_parameters present in the enriched JSON."""
    return _enriched_check(context, db, blobs, "enriched_has_input_parameters", "input_parameters present")


@asset_check(asset=enriched_conversations, partitions_def=batch_jobs_partitions, blocking=True,
             description="Every training pair has persona_archetype, emotional_arc, emotional_arc_key, "
             "training_topic and training_topic_key.")
def training_pairs_have_scaffolding(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Bug spec Test Case 2: the 5 scaffolding fields on every pair."""
    return _enriched_check(context, db, blobs, "training_pairs_have_scaffolding", "all pairs carry the 5 scaffolding fields")


@asset_check(asset=enriched_conversations, partitions_def=batch_jobs_partitions, blocking=True,
             description="client_background is readable text (no '[object Object]', no JSON or Python repr).")
def client_background_readable(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Bug #3 of the spec can never come back."""
    return _enriched_check(context, db, blobs, "client_background_readable", "client_background readable")


@asset_check(asset=enriched_conversations, partitions_def=batch_jobs_partitions, blocking=True,
             description="Every parsed conversation of the batch is enriched; none is left not_started.")
def all_conversations_enriched(context, db: DomainDB) -> AssetCheckResult:
    """Bug #4 of the spec: enrichment always happens (or its failure is stated)."""
    with db.engine().connect() as conn:
        rows = batch_conversations(conn, db.batch_id(context.partition_key), columns=(
            "id", "parse_status", "enrichment_status", "enrichment_error", "parse_error", "enriched_file_path"))
    # "Enriched" is the store's rule (the one training files use for members).
    not_enriched = [
        (r["id"], r["parse_status"], r["enrichment_status"], r["enrichment_error"] or r["parse_error"] or "")
        for r in rows if r["parse_status"] == ParseStatus.PARSED and not_enriched_reason(r) is not None
    ]
    parse_failed = sum(1 for r in rows if r["parse_status"] == ParseStatus.FAILED)
    return AssetCheckResult(
        passed=not not_enriched,
        description=f"{len(rows) - len(not_enriched) - parse_failed} of {len(rows)} conversations enriched; "
        f"{parse_failed} failed parsing (reasons on their rows); {len(not_enriched)} parsed but not enriched",
        metadata={
            "conversations": len(rows),
            "parsed_not_enriched": len(not_enriched),
            "parse_failed": parse_failed,
            "not_enriched": reasons_table(not_enriched, "parse", "enrichment", "reason"),
        },
    )
