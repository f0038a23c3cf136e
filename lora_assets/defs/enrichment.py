"""enriched_conversations: v4.0 per-conversation training pairs, automatically after parsing."""


from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
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
from lora_assets.defs.parsing import parsed_conversations
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.report import conversation_check_result, md_table
from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.schemas import EnrichedConversation, EnrichmentStatus, ParsedConversation, ParseStatus
from lora_assets.store import queries as q

@asset(
    partitions_def=batch_jobs_partitions,
    deps=[parsed_conversations],
    group_name="generation",
    automation_condition=AutomationCondition.eager(),
    kinds={"python", "sql"},
)
def enriched_conversations(context: AssetExecutionContext, db: DomainDB, blobs: BlobStoreResource) -> MaterializeResult:
    """Enrich every parsed conversation of the batch not yet enriched into the v4.0 individual
    JSON (one training pair per user turn, 5 scaffolding fields per pair, readable
    client_background, quality scores). Writes `enriched.json`, `enriched_file_path` and
    `enrichment_status = completed`; failures are stored with their reason and retried from the
    stored parsed file on the next run. Runs on its own after parsing (eager automation)."""
    batch_id = context.partition_key
    engine = db.engine()
    store = blobs.store()
    with engine.connect() as conn:
        rows = q.batch_conversations(
            conn,
            batch_id,
            parse_status=ParseStatus.PARSED,
            enrichment_status=[EnrichmentStatus.NOT_STARTED, EnrichmentStatus.FAILED, EnrichmentStatus.IN_PROGRESS],
        )
        # As planned: the batch's consultant and each row's scaffolding snapshot, not today's rows.
        consultant = q.batch_consultant(conn, q.get_batch(conn, batch_id) or {})
        snapshots = q.resolve_conversations(conn, rows)
    created_date = datetime.now(UTC).date().isoformat()
    done = 0
    pairs = 0
    failures: list[tuple[str, str]] = []
    scores: list[float] = []
    for row in rows:
        key = row["file_path"].rsplit("/", 1)[0] + "/enriched.json"
        try:
            parsed = ParsedConversation.model_validate_json(store.get_bytes(row["file_path"]))
            persona = topic = None
            if parsed.input_parameters is not None:
                snap = snapshots[row["id"]]
                if snap.persona.id == parsed.input_parameters.persona_id:
                    persona = snap.persona
                if snap.training_topic.id == parsed.input_parameters.training_topic_id:
                    topic = snap.training_topic
            enriched = enrich_conversation(
                parsed,
                conversation_id=row["id"],
                consultant=consultant,
                persona=persona,
                training_topic=topic,
                created_date=created_date,
            )
        except (EnrichError, ValueError) as exc:
            failures.append((row["id"], str(exc)))
            with engine.begin() as conn:
                q.update_conversation(conn, row["id"], enrichment_status=EnrichmentStatus.FAILED, enrichment_error=str(exc))
            continue
        store.put_bytes(key, enriched.model_dump_json(indent=2).encode())
        quality = conversation_quality(enriched)
        with engine.begin() as conn:
            q.update_conversation(
                conn,
                row["id"],
                enrichment_status=EnrichmentStatus.COMPLETED,
                enrichment_error=None,
                enriched_file_path=key,
                training_pair_count=len(enriched.training_pairs),
                quality_score=quality,
            )
        done += 1
        pairs += len(enriched.training_pairs)
        scores.append(quality)
    with engine.connect() as conn:
        progress = q.batch_progress(conn, batch_id)
    return MaterializeResult(
        metadata={
            "enriched_this_run": done,
            "failed_this_run": len(failures),
            "training_pairs_this_run": pairs,
            "enriched_total": progress["enrichment"][EnrichmentStatus.COMPLETED],
            "avg_quality_this_run": round(sum(scores) / len(scores), 3) if scores else 0.0,
            "failures": MetadataValue.md(md_table(["conversation", "reason"], failures[:50], empty="No failures.")),
        }
    )


def _iter_enriched(conn: Any, store: Any, batch_id: str):
    for row in q.batch_conversations(conn, batch_id, enrichment_status=EnrichmentStatus.COMPLETED):
        try:
            yield row, EnrichedConversation.model_validate_json(store.get_bytes(row["enriched_file_path"])), None
        except Exception as exc:  # noqa: BLE001 - reported per conversation by the check
            yield row, None, f"enriched.json unreadable: {exc}"


def _enriched_check(context: Any, db: DomainDB, blobs: BlobStoreResource, rule: Any, what: str) -> AssetCheckResult:
    # `what` completes "<ok> of <n> enriched conversations: …" (the check's description).
    """Apply a core.validate rule to every enriched conversation of the partition."""
    problems: dict[str, list[str]] = {}
    checked = 0
    with db.engine().connect() as conn:
        for row, enriched, error in _iter_enriched(conn, blobs.store(), context.partition_key):
            checked += 1
            msgs = [error] if error else [str(p) for p in rule(enriched)]
            if msgs:
                problems[row["id"]] = msgs
    return conversation_check_result(problems, checked, "{ok} of {n} enriched conversations: " + what)


@asset_check(asset=enriched_conversations, partitions_def=batch_jobs_partitions, blocking=True,
             description="enriched.json has input_parameters (copied from the parsed conversation).")
def enriched_has_input_parameters(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Bug spec Test Case 2: input_parameters present in the enriched JSON."""
    return _enriched_check(context, db, blobs, enriched_input_parameter_problems, "input_parameters present")


@asset_check(asset=enriched_conversations, partitions_def=batch_jobs_partitions, blocking=True,
             description="Every training pair has persona_archetype, emotional_arc, emotional_arc_key, "
             "training_topic and training_topic_key.")
def training_pairs_have_scaffolding(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Bug spec Test Case 2: the 5 scaffolding fields on every pair."""
    return _enriched_check(context, db, blobs, pair_scaffolding_problems, "all pairs carry the 5 scaffolding fields")


@asset_check(asset=enriched_conversations, partitions_def=batch_jobs_partitions, blocking=True,
             description="client_background is readable text (no '[object Object]', no JSON or Python repr).")
def client_background_readable(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Bug #3 of the spec can never come back."""
    return _enriched_check(context, db, blobs, client_background_problems, "client_background readable")


@asset_check(asset=enriched_conversations, partitions_def=batch_jobs_partitions, blocking=True,
             description="Every parsed conversation of the batch is enriched; none is left not_started.")
def all_conversations_enriched(context, db: DomainDB) -> AssetCheckResult:
    """Bug #4 of the spec: enrichment always happens (or its failure is stated)."""
    with db.engine().connect() as conn:
        rows = q.batch_conversations(conn, context.partition_key)
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
