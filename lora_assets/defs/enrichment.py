"""enriched_conversations: v4.0 per-conversation training pairs, automatically after parsing."""


from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from lora_assets.core.enrich import EnrichError, enrich_conversation
from lora_assets.core.quality import conversation_quality
from lora_assets.core.validate import (
    client_background_problems,
    enriched_input_parameter_problems,
    pair_scaffolding_problems,
)
from lora_assets.defs import recorded_checks
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.report import md_table
from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.schemas import (
    ConsultantProfile,
    EnrichedConversation,
    EnrichmentStatus,
    ParsedConversation,
    ParseStatus,
    ResolvedScaffolding,
)
from lora_assets.store import queries as q

#: The file-reading checks of this stage, by name: computed on each conversation as it is enriched.
RULES: recorded_checks.Rules = {
    "enriched_has_input_parameters": lambda doc, _: enriched_input_parameter_problems(doc),
    "training_pairs_have_scaffolding": lambda doc, _: pair_scaffolding_problems(doc),
    "client_background_readable": lambda doc, _: client_background_problems(doc),
}

@dataclass
class _Tally:
    done: int = 0
    pairs: int = 0
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
        "enriched_file_path": q.sibling_key(row["file_path"], "enriched.json"),
        "training_pair_count": len(enriched.training_pairs),
        "quality_score": conversation_quality(enriched),
        "enrichment_checks": recorded_checks.findings(RULES, enriched, None, run_id),
    }, enriched.model_dump_json(indent=2).encode()


@asset(
    partitions_def=batch_jobs_partitions,
    deps=[AssetKey("parsed_conversations")],
    group_name="generation",
    automation_condition=AutomationCondition.eager(),
    kinds={"python", "sql"},
)
def enriched_conversations(context: AssetExecutionContext, db: DomainDB, blobs: BlobStoreResource) -> MaterializeResult:
    """Enrich every parsed conversation of the batch not yet enriched into the v4.0 individual
    JSON (one training pair per user turn, 5 scaffolding fields per pair, readable
    client_background, quality scores). Writes `enriched.json`, `enriched_file_path` and
    `enrichment_status = completed`, and records what this stage's checks find on each
    conversation while it is in memory; failures are stored with their reason and retried from
    the stored parsed file on the next run. One pass through a bounded blob pool, rows updated a
    chunk per transaction. Runs on its own after parsing (eager automation)."""
    batch_id = context.partition_key
    engine = db.engine()
    with engine.connect() as conn:
        # As planned: the batch's consultant, not today's row.
        consultant = q.batch_consultant(conn, q.get_batch(conn, batch_id) or {})
    created_date = datetime.now(UTC).date().isoformat()
    tally = _Tally()
    todo = {"parse_status": ParseStatus.PARSED, "enrichment_status": [
        EnrichmentStatus.NOT_STARTED, EnrichmentStatus.FAILED, EnrichmentStatus.IN_PROGRESS]}
    for u in recorded_checks.stream_stage(
        engine=engine, blobs=blobs, batch_id=batch_id, row_filter=todo, read_column="file_path",
        process=lambda row, data, snapshot: enrich_row(row, data, snapshot, consultant, created_date, context.run_id),
        out_column="enriched_file_path",
        unstored=lambda cid, exc: {"id": cid, "enrichment_status": EnrichmentStatus.FAILED, "enrichment_error":
                                   f"enriched.json could not be written ({type(exc).__name__}: {exc})"},
    ):
        if u["enrichment_status"] == EnrichmentStatus.COMPLETED:
            tally.done += 1
            tally.pairs += u["training_pair_count"]
            tally.score_sum += u["quality_score"]
        else:
            tally.failures.append((u["id"], u["enrichment_error"]))
    with engine.connect() as conn:
        progress = q.batch_progress(conn, batch_id)
    return MaterializeResult(
        metadata={
            "enriched_this_run": tally.done,
            "failed_this_run": len(tally.failures),
            "training_pairs_this_run": tally.pairs,
            "enriched_total": progress["enrichment"][EnrichmentStatus.COMPLETED],
            "avg_quality_this_run": round(tally.score_sum / tally.done, 3) if tally.done else 0.0,
            "failures": MetadataValue.md(md_table(["conversation", "reason"], tally.failures[:50], empty="No failures.")),
        }
    )


def _enriched_check(context: Any, db: DomainDB, blobs: BlobStoreResource, name: str, what: str) -> AssetCheckResult:
    """`name` over every enriched conversation of the partition: from this run's records, and
    from the file for conversations another run enriched."""
    return recorded_checks.verify(
        engine=db.engine(), blobs=blobs, batch_id=context.partition_key, run_id=context.run.run_id,
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
        rows = q.batch_conversations(conn, context.partition_key, columns=(
            "id", "parse_status", "enrichment_status", "enrichment_error", "parse_error"))
    not_enriched = [
        (r["id"], r["parse_status"], r["enrichment_status"], r["enrichment_error"] or r["parse_error"] or "")
        for r in rows
        if r["parse_status"] == ParseStatus.PARSED and r["enrichment_status"] != EnrichmentStatus.COMPLETED
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
            "not_enriched": MetadataValue.md(
                md_table(["conversation", "parse", "enrichment", "reason"], not_enriched[:50], empty="None.")
            ),
        },
    )
