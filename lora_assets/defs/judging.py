"""judged_conversations: the optional Claude judge, scores stored on each conversation."""

import asyncio
import json
import uuid
from typing import Any

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from lora_assets.core.judge import JudgeError, judge_output_schema, judge_system_prompt, judge_user_prompt, parse_judge_response
from lora_assets.defs.enrichment import enriched_conversations
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.report import md_table
from lora_assets.defs.resources import BlobStoreResource, ClaudeResource, DomainDB
from lora_assets.schemas import EnrichmentStatus, GenerationRecord, ParsedConversation
from lora_assets.store import db as dbq
from lora_assets.store import queries as q
from lora_assets.store.blobs import BlobStore

_JUDGE_NS = uuid.UUID("3f1d2a8e-4b7c-4e0a-9c55-2d8f6b1e7a90")


def judge_item_id(conversation_id: str) -> str:
    """The runner's item id for judging a conversation (stable, so the simulator/API keys match)."""
    return "judge-" + uuid.uuid5(_JUDGE_NS, conversation_id).hex


class JudgeLedger:
    """Stores each judge response as judge.json next to the conversation and its scores on the row.
    A conversation already judged is never judged (paid for) again."""

    def __init__(self, engine: Any, store: BlobStore, rows: dict[str, dict[str, Any]]) -> None:
        self.engine, self.store, self.rows = engine, store, rows
        self.claims = q.SqlClaims(engine)
        self.failures: list[tuple[str, str]] = []
        self.scores: list[float] = []

    def claim(self, item_ids: list[str], run_id: str, ttl_s: float) -> dict[str, str]:
        """Lease the judge items (a concurrent judge run of the batch skips them)."""
        held = self.claims.take(item_ids, run_id, ttl_s)
        return {i: "held" if i in held else "claimed" for i in item_ids}

    def renew_claims(self, run_id: str, ttl_s: float) -> None:
        self.claims.renew(run_id, ttl_s)

    def release_claims(self, run_id: str) -> None:
        self.claims.release(run_id)

    def record_success(self, item_id: str, record: GenerationRecord) -> bool:
        row = self.rows.get(item_id)
        if row is None:
            return False  # a spooled answer for a conversation judged since: nothing to store
        key = row["file_path"].rsplit("/", 1)[0] + "/judge.json"
        payload = {"response": record.response, "generation": record.model_dump(mode="json", exclude={"response"})}
        if not self.store.put_if_absent(key, json.dumps(payload).encode()):
            return False
        try:
            scores = parse_judge_response(record.response, conversation_id=row["id"])
            value: dict[str, Any] = scores.model_dump() | {"overall": scores.overall, "generator": record.generator,
                                                           "model": record.model, "cost_usd": record.cost_usd}
            self.scores.append(scores.overall)
        except JudgeError as exc:
            value = {"error": str(exc), "generator": record.generator, "cost_usd": record.cost_usd}
            self.failures.append((row["id"], str(exc)))
        with self.engine.begin() as conn:
            q.update_conversation(conn, row["id"], judge_scores=value)
        return True

    def record_failure(self, item_id: str, kind: str, reason: str, attempts: int, cost_usd: float) -> None:
        row = self.rows[item_id]
        error = f"conversation {row['id']}: judge failed after {attempts} attempt(s): {kind}: {reason}"
        self.failures.append((row["id"], error))
        with self.engine.begin() as conn:
            q.update_conversation(conn, row["id"], judge_scores={"error": error, "cost_usd": cost_usd})


@asset(
    partitions_def=batch_jobs_partitions,
    deps=[enriched_conversations],
    group_name="quality",
    pool="claude_api",
    kinds={"anthropic"},
)
def judged_conversations(
    context: AssetExecutionContext, db: DomainDB, blobs: BlobStoreResource, claude: ClaudeResource
) -> MaterializeResult:
    """Optional: Claude (same client and limits as generation) scores each enriched conversation of
    the batch on empathy, clarity, appropriateness and brand voice; the scores and rationale are
    stored on the conversation (`judge_scores`) and the response as judge.json. Conversations
    already judged are skipped. Not part of the default batch job: materialise it when wanted."""
    from lora_assets.generation.runner import GenerationRequest, generate_messages  # see raw_conversations

    batch_id = context.partition_key
    engine = db.engine()
    store = blobs.store()
    with engine.connect() as conn:
        rows = [r for r in q.batch_conversations(conn, batch_id, enrichment_status=EnrichmentStatus.COMPLETED)
                if not r["judge_scores"] or "error" in r["judge_scores"]]
        consultant = dbq.read_consultant_profile(conn)
        batch = q.get_batch(conn, batch_id)
    if batch is None:
        raise Failure(f"batch job {batch_id!r} does not exist")
    by_item = {judge_item_id(r["id"]): r for r in rows}
    system = judge_system_prompt(consultant)
    schema = judge_output_schema()
    requests = []
    for item_id, row in by_item.items():
        parsed = ParsedConversation.model_validate_json(store.get_bytes(row["file_path"]))
        requests.append(GenerationRequest(item_id=item_id, system=system, user=judge_user_prompt(parsed),
                                          max_tokens=1024, output_schema=schema))
    ledger = JudgeLedger(engine, store, by_item)
    config = claude.run_config(model=batch["model"], run_id=context.run_id, spool_scope=f"judge-{batch_id}")
    stats = asyncio.run(generate_messages(requests, ledger, config))
    return MaterializeResult(
        metadata={
            "judged_this_run": len(ledger.scores),
            "failed_this_run": len(ledger.failures),
            "avg_judge_overall": round(sum(ledger.scores) / len(ledger.scores), 3) if ledger.scores else 0.0,
            "cost_usd_this_run": round(stats.cost_usd, 6),
            "failures": MetadataValue.md(md_table(["conversation", "reason"], ledger.failures[:50], empty="No failures.")),
        }
    )
