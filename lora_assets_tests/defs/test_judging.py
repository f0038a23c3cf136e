"""The optional Claude judge: scores stored per conversation, never bought twice, failures stated."""

from pathlib import Path

import pytest
from dagster import DagsterInstance

from lora_assets.core.judge import JudgeError, parse_judge_response
from lora_assets.defs.judging import judge_item_id
from lora_assets.generation.simulator import ClaudeSimulator, FaultConfig
from lora_assets.store.conversations import update_conversation
from lora_assets_tests.defs import helpers as h


def _judge(defs, instance, batch_id):
    return defs.resolve_job_def("judge_batch").execute_in_process(partition_key=batch_id, instance=instance,
                                                                  raise_on_error=False)


def test_judge_scores_every_enriched_conversation_once(sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator) -> None:
    engine = h.setup_store(sqlite_url)
    blobs = h.local_blobs(tmp_path / "blobs")
    defs = h.make_defs(sqlite_url, blobs, sim)
    batch_id = h.plan(engine, 2, 2, 1)
    with DagsterInstance.ephemeral() as instance:
        assert h.run_batch(defs, instance, batch_id).success
        result = _judge(defs, instance, batch_id)
        assert result.success
        md = h.metadata(result, "judged_conversations")
        rows = h.conversations(engine, batch_id)
        assert md["judged_this_run"] == len(rows) == 4 and md["failed_this_run"] == 0
        for row in rows:
            scores = row["judge_scores"]
            assert 1 <= scores["empathy_score"] <= 5 and scores["generator"] == "simulator"
            assert "not Claude" in scores["rationale"]
            assert blobs.store().exists(row["file_path"].rsplit("/", 1)[0] + "/judge.json")
        keys = [judge_item_id(r["id"]) for r in rows]
        assert all(sim.stats.delivered_by_key[k] == 1 for k in keys)
        # Judged conversations are not judged (paid for) again.
        again = _judge(defs, instance, batch_id)
        assert h.metadata(again, "judged_conversations")["judged_this_run"] == 0
        assert all(sim.stats.attempts_by_key[k] == 1 for k in keys)


def test_unusable_judge_output_is_a_stated_failure(sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator) -> None:
    engine = h.setup_store(sqlite_url)
    defs = h.make_defs(sqlite_url, h.local_blobs(tmp_path / "blobs"), sim)
    batch_id = h.plan(engine, 1, 2, 1)
    with DagsterInstance.ephemeral() as instance:
        assert h.run_batch(defs, instance, batch_id).success
        sim.config = FaultConfig(refusal_rate=1.0)
        result = _judge(defs, instance, batch_id)
        assert result.success
        md = h.metadata(result, "judged_conversations")
        assert md["failed_this_run"] == 2
        for row in h.conversations(engine, batch_id):
            error = row["judge_scores"]["error"]
            assert row["id"] in error and "refusal" in error
        # Errors are retried on the next run (a new sample may be usable).
        sim.config = FaultConfig()
        store = h.local_blobs(tmp_path / "blobs").store()
        assert not any(k.endswith("/judge.json") for k in store.list("conversation-files"))
        assert h.metadata(_judge(defs, instance, batch_id), "judged_conversations")["judged_this_run"] == 2


def test_parse_judge_response_rejects_out_of_range_scores() -> None:
    with pytest.raises(JudgeError, match="conversation c1: judge response unusable"):
        parse_judge_response('{"empathy_score": 9, "clarity_score": 3, "appropriateness_score": 3, '
                             '"brand_voice_alignment": 3, "rationale": "x"}', conversation_id="c1")


def test_conversations_another_live_judge_run_holds_are_not_judged_twice(
    sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator
) -> None:
    """Judge items are claimed like generation items: what a live judge run holds is not
    requested by a second one; once that run's claims are gone, the next run judges them."""
    from lora_assets.store.claims import SqlClaims

    engine = h.setup_store(sqlite_url)
    blobs = h.local_blobs(tmp_path / "blobs")
    defs = h.make_defs(sqlite_url, blobs, sim, claim_ttl_s=2.0)  # renewed every 0.67 s: a 0.4 s lease lapsed under CPU load (flake)
    batch_id = h.plan(engine, 2, 2, 1)
    with DagsterInstance.ephemeral() as instance:
        assert h.run_batch(defs, instance, batch_id).success
        keys = [judge_item_id(r["id"]) for r in h.conversations(engine, batch_id)]
        held_elsewhere = keys[:2]
        claims = SqlClaims(engine)
        assert claims.take(held_elsewhere, "another-live-judge-run", 600) == set(held_elsewhere)
        first = _judge(defs, instance, batch_id)
        assert first.success
        assert h.metadata(first, "judged_conversations")["judged_this_run"] == 2
        assert all(sim.stats.attempts_by_key.get(k, 0) == 0 for k in held_elsewhere)
        claims.release("another-live-judge-run")
        second = _judge(defs, instance, batch_id)
        assert h.metadata(second, "judged_conversations")["judged_this_run"] == 2
        assert all(sim.stats.attempts_by_key[k] == 1 for k in keys)


def test_an_unusable_judge_answer_is_paid_for_once(
    sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole answer the judge cannot use (scores out of range, stop_reason end_turn) was paid
    for: it is stored as judge.json, its failure and reason go on the row, and no later run
    requests it again (before the fix every later run paid for it again, and never stored it)."""
    from lora_assets.generation import simulator

    engine = h.setup_store(sqlite_url)
    blobs = h.local_blobs(tmp_path / "blobs")
    defs = h.make_defs(sqlite_url, blobs, sim)
    batch_id = h.plan(engine, 1, 2, 1)
    with DagsterInstance.ephemeral() as instance:
        assert h.run_batch(defs, instance, batch_id).success
        keys = [judge_item_id(r["id"]) for r in h.conversations(engine, batch_id)]
        usable = simulator._judge_scores
        monkeypatch.setattr(simulator, "_judge_scores", lambda text, key: usable(text, key) | {"empathy_score": 9})
        first = _judge(defs, instance, batch_id)
        assert h.metadata(first, "judged_conversations")["failed_this_run"] == 2
        assert all(sim.stats.attempts_by_key[k] == 1 for k in keys)
        monkeypatch.setattr(simulator, "_judge_scores", usable)
        for _ in range(2):
            again = _judge(defs, instance, batch_id)
            assert again.success
            assert h.metadata(again, "judged_conversations")["cost_usd_this_run"] == 0
        assert all(sim.stats.attempts_by_key[k] == 1 for k in keys)
        for row in h.conversations(engine, batch_id):
            scores = row["judge_scores"]
            assert row["id"] in scores["error"] and "judge response unusable" in scores["error"]
            assert "empathy_score" in scores["error"] and scores["cost_usd"] > 0
            assert scores["answer_path"] == row["file_path"].rsplit("/", 1)[0] + "/judge.json"
            assert blobs.store().exists(scores["answer_path"])
        # A row that lost its outcome (a crash after judge.json was written) is made from storage.
        with engine.begin() as conn:
            for row in h.conversations(engine, batch_id):
                update_conversation(conn, row["id"], judge_scores=None)
        assert _judge(defs, instance, batch_id).success
        assert all(sim.stats.attempts_by_key[k] == 1 for k in keys)
        assert all("judge response unusable" in r["judge_scores"]["error"] for r in h.conversations(engine, batch_id))


def test_judge_thinking_at_the_models_default_effort_is_never_cut_and_its_prompt_is_cached(
        sqlite_url: str, tmp_path: Path, sim: ClaudeSimulator) -> None:
    import json

    from lora_assets.core.judge import JUDGE_MAX_TOKENS
    from lora_assets.schemas import BatchSelection
    from lora_assets.store import db as dbq
    from lora_assets.store.batches import plan_batch

    engine = h.setup_store(sqlite_url)
    blobs = h.local_blobs(tmp_path / "blobs")
    defs = h.make_defs(sqlite_url, blobs, sim)
    with engine.connect() as conn:
        persona = [p.persona_key for p in dbq.read_personas(conn)][:4]
        arc = [a.arc_key for a in dbq.read_emotional_arcs(conn)][:1]
        topic = [x.topic_key for x in dbq.read_training_topics(conn)][:1]
    # `medium` is Haiku 5.5's own default effort: the judge thinks as much as it would unasked.
    batch_id, _ = plan_batch(engine, selection=BatchSelection(persona_keys=persona, arc_keys=arc, topic_keys=topic,
                                                              effort="medium"),
                             model="claude-haiku-5-5", mode="messages", created_by="tests", name="judge-medium")
    with DagsterInstance.ephemeral() as instance:
        assert h.run_batch(defs, instance, batch_id).success
        result = _judge(defs, instance, batch_id)
    assert result.success
    md = h.metadata(result, "judged_conversations")
    rows = h.conversations(engine, batch_id)
    assert md["judged_this_run"] == len(rows) > 2 and md["failed_this_run"] == 0
    answers = [json.loads(blobs.store().get_bytes(r["file_path"].rsplit("/", 1)[0] + "/judge.json")) for r in rows]
    assert all(a["response"]["stop_reason"] == "end_turn" for a in answers)  # 0 truncated
    assert all(a["response"]["content"][0]["type"] == "thinking" for a in answers)  # it did think
    usages = [a["generation"]["usage"] for a in answers]
    assert max(u["output_tokens"] for u in usages) < JUDGE_MAX_TOKENS / 2  # headroom to spare
    # The judge prompt reaches the 512-token cache minimum: judgements after the first read it.
    assert sum(u["cache_read_input_tokens"] > 512 for u in usages) >= len(rows) - 1
    assert all(sim.stats.attempts_by_key[judge_item_id(r["id"])] == 1 for r in rows)
