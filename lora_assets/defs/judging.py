"""judged_conversations: the optional Claude judge, scores stored on each conversation."""

import asyncio
import json
import uuid
from typing import Any

from dagster import AssetExecutionContext, AssetKey, Failure, MaterializeResult, asset

from lora_assets.core.judge import (
    JUDGE_MAX_TOKENS,
    JudgeError,
    judge_output_schema,
    judge_system_prompt,
    judge_user_prompt,
    parse_judge_response,
)
from lora_assets.defs.partitions import batch_jobs_partitions
from lora_assets.defs.report import reasons_table
from lora_assets.defs.resources import BlobStoreResource, ClaudeResource, DomainDB
from lora_assets.schemas import EnrichmentStatus, GenerationRecord, ParsedConversation
from lora_assets.store import db as dbq
from lora_assets.store.batches import get_batch
from lora_assets.store.claims import SqlClaims
from lora_assets.store.common import sibling_key
from lora_assets.store.conversations import batch_conversations, update_conversation
from lora_assets.store.blobs import BlobStore

_JUDGE_NS = uuid.UUID("3f1d2a8e-4b7c-4e0a-9c55-2d8f6b1e7a90")


def judge_item_id(conversation_id: str) -> str:
    """The runner's item id for judging a conversation (stable, so the simulator/API keys match)."""
    return "judge-" + uuid.uuid5(_JUDGE_NS, conversation_id).hex


def judge_key(row: dict[str, Any]) -> str:
    """Where a conversation's judge answer is stored: judge.json next to its conversation.json."""
    return sibling_key(row["file_path"], "judge.json")


class JudgeLedger:
    """Stores each judge answer as judge.json next to the conversation, then its scores (or why
    it is unusable) on the row. An answer is paid for once: a conversation whose judge.json
    exists is never requested again; its row is (re)made from the stored answer. A usable answer
    gives scores; an unusable one gives `{"error", "answer_path", ...}` on the row (delete the
    judge.json to buy a new judgement)."""

    def __init__(self, engine: Any, store: BlobStore, rows: dict[str, dict[str, Any]]) -> None:
        self.engine, self.store, self.rows = engine, store, rows
        self.claims = SqlClaims(engine)
        self.failures: list[tuple[str, str]] = []
        self.scores: list[float] = []
        self.unusable_stored: list[tuple[str, str]] = []

    def claim(self, item_ids: list[str], run_id: str, ttl_s: float) -> dict[str, str]:
        """Lease the judge items (a concurrent judge run of the batch skips them); an item whose
        answer is stored already (e.g. by a run that ended meanwhile) is "stored", not requested."""
        held = self.claims.take(item_ids, run_id, ttl_s)
        stored = {i for i in held if i in self.rows and self.store.exists(judge_key(self.rows[i]))}
        if stored:
            self.claims.drop(stored, run_id)
            for item_id in stored:
                self.record_stored(item_id)
        return {i: "stored" if i in stored else "held" if i in held else "claimed" for i in item_ids}

    def renew_claims(self, run_id: str, ttl_s: float) -> None:
        self.claims.renew(run_id, ttl_s)

    def release_claims(self, run_id: str) -> None:
        self.claims.release(run_id)

    def record_success(self, item_id: str, record: GenerationRecord) -> bool:
        """Store the answer (raw first, then parse it), and put its scores or its failure on the
        row. If an answer was stored first, the row is made from that one and this is a duplicate."""
        row = self.rows.get(item_id)
        if row is None:
            return False  # a spooled answer for a conversation judged since: nothing to store
        payload = {"response": record.response, "generation": record.model_dump(mode="json", exclude={"response"})}
        data = json.dumps(payload).encode()
        key = judge_key(row)
        created = self.store.put_if_absent(key, data)
        if not created and self.store.get_bytes(key) != data:
            self.record_stored(item_id)
            return False
        self._record_answer(row, payload, fresh=True)
        return True

    def record_stored(self, item_id: str) -> None:
        """Make the row from the stored judge.json (no request: it was paid for already)."""
        row = self.rows[item_id]
        key = judge_key(row)
        try:
            payload = json.loads(self.store.get_bytes(key))
            if not isinstance(payload, dict) or not {"response", "generation"} <= payload.keys():
                raise ValueError("not a stored answer")
        except ValueError as exc:
            error = f"conversation {row['id']}: stored judge answer {key} is unreadable ({exc})"
            self._record_unusable(row, error, key, {}, fresh=False)
            return
        self._record_answer(row, payload, fresh=False)

    def _record_answer(self, row: dict[str, Any], payload: dict[str, Any], *, fresh: bool) -> None:
        generation = payload["generation"] if isinstance(payload["generation"], dict) else {}
        try:
            scores = parse_judge_response(payload["response"], conversation_id=row["id"])
        except JudgeError as exc:
            self._record_unusable(row, str(exc), judge_key(row), generation, fresh=fresh)
            return
        value: dict[str, Any] = scores.model_dump() | {
            "overall": scores.overall, "generator": generation.get("generator"), "model": generation.get("model"),
            "cost_usd": generation.get("cost_usd"),
        }
        self.scores.append(scores.overall)
        with self.engine.begin() as conn:
            update_conversation(conn, row["id"], judge_scores=value)

    def _record_unusable(self, row: dict[str, Any], error: str, key: str, generation: dict[str, Any], *,
                         fresh: bool) -> None:
        """A paid answer that gives no scores: a stated failure on the row, never requested again."""
        (self.failures if fresh else self.unusable_stored).append((row["id"], error))
        value = {"error": error, "answer_path": key, "generator": generation.get("generator"),
                 "model": generation.get("model"), "cost_usd": generation.get("cost_usd")}
        if row.get("judge_scores") == value:
            return
        with self.engine.begin() as conn:
            update_conversation(conn, row["id"], judge_scores=value)

    def record_failure(self, item_id: str, kind: str, reason: str, attempts: int, cost_usd: float) -> None:
        """No whole answer (refusals, truncation, API errors): the next run may request it again."""
        row = self.rows[item_id]
        error = f"conversation {row['id']}: judge failed after {attempts} attempt(s): {kind}: {reason}"
        self.failures.append((row["id"], error))
        with self.engine.begin() as conn:
            update_conversation(conn, row["id"], judge_scores={"error": error, "cost_usd": cost_usd})


@asset(
    partitions_def=batch_jobs_partitions,
    deps=[AssetKey("enriched_conversations")],
    group_name="quality",
    pool="claude_api",
    kinds={"anthropic"},
)
def judged_conversations(
    context: AssetExecutionContext, db: DomainDB, blobs: BlobStoreResource, claude: ClaudeResource
) -> MaterializeResult:
    """Optional: Claude (same client and limits as generation) scores each enriched conversation of
    the batch on empathy, clarity, appropriateness and brand voice; the scores and rationale are
    stored on the conversation (`judge_scores`) and the response as judge.json (stored before it
    is parsed). Conversations already judged are skipped, and so is any conversation whose
    judge.json exists: a paid answer, usable or not, is never paid for again (an unusable one is
    a failure with its reason on the row). Not part of the default batch job: materialise it when
    wanted."""
    # See raw_conversations: the SDK is imported only when the asset runs.
    from lora_assets.generation.client import DEFAULT_EFFORT
    from lora_assets.generation.runner import GenerationRequest, RunAbortedError, generate_messages

    batch_id = db.batch_id(context.partition_key)
    engine = db.engine()
    store = blobs.store()
    with engine.connect() as conn:
        rows = [r for r in batch_conversations(conn, batch_id, enrichment_status=EnrichmentStatus.COMPLETED)
                if not r["judge_scores"] or "error" in r["judge_scores"]]
        consultant = dbq.read_consultant_profile(conn)
        batch = get_batch(conn, batch_id)
    if batch is None:
        raise Failure(f"batch job {batch_id!r} does not exist")
    by_item = {judge_item_id(r["id"]): r for r in rows}
    # An item whose judge.json is stored is reported "stored" by the ledger's claim (its row is
    # made from the stored answer): it was paid for, and is never requested again.
    ledger = JudgeLedger(engine, store, by_item)
    system = judge_system_prompt(consultant)
    schema = judge_output_schema()
    requests = []
    for item_id, row in by_item.items():
        parsed = ParsedConversation.model_validate_json(store.get_bytes(row["file_path"]))
        requests.append(GenerationRequest(item_id=item_id, system=system, user=judge_user_prompt(parsed),
                                          max_tokens=JUDGE_MAX_TOKENS, output_schema=schema))
    # The batch's thinking effort, and max_tokens fixed at the judge's headroom: a judgement is
    # short, so a cut one would only be paid twice for an OTPM saving nobody needs.
    effort = (batch.get("selection") or {}).get("effort") or DEFAULT_EFFORT
    config = claude.run_config(model=batch["model"], run_id=context.run_id, spool_scope=f"judge-{batch_id}",
                               effort=effort, size_max_tokens=False)
    try:
        stats = asyncio.run(generate_messages(requests, ledger, config))
    except RunAbortedError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    return MaterializeResult(
        metadata={
            "judged_this_run": len(ledger.scores),
            "failed_this_run": len(ledger.failures),
            "unusable_stored_answers": len(ledger.unusable_stored),
            "avg_judge_overall": round(sum(ledger.scores) / len(ledger.scores), 3) if ledger.scores else 0.0,
            "cost_usd_this_run": round(stats.cost_usd, 6),
            "failures": reasons_table(ledger.failures + ledger.unusable_stored, "reason"),
        }
    )
