"""Benchmark: the training-file aggregate path against the cost of merely touching the JSON.

1. Builds >= 100,000 training pairs of realistic size (synthetic, schema-valid v4.0 enriched
   conversations: a ~1.5 KB advisor system prompt, 3-5 pairs per conversation with growing
   history, 250-450 char client turns, 600-1100 char advisor turns) and writes them once to a
   temp JSONL of enriched documents, one conversation per line.
2. In a subprocess, times OUR path: read the enriched docs line by line ->
   `EnrichedConversation.model_validate_json` -> `AggregateWriter.add` (the JSONL and the JSON
   document's pairs, as a build writes them) -> the document's head (`training_json_head`) put
   before its pairs (as the local store's writer with a deferred head does), and records the
   child's peak RSS (`ru_maxrss`).
3. In another subprocess, times the FLOOR: plain `json.load` + `json.dump` of the aggregated
   document (the same data as one JSON file), the least any Python tool does to rewrite it.
4. Reports time ratio (aim <= 1.5x) and our peak memory (aim <= 300 MB), writes the JSON to
   `--out` and prints it.

    .venv/bin/python bench/bench_aggregate.py [--pairs 100000] [--out bench/results/aggregate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TIME_RATIO_AIM = 1.5
PEAK_RSS_AIM_MB = 300.0

_WORDS = (
    "mortgage rate budget savings retirement roth account emergency fund debt payoff invest index "
    "risk tolerance goal timeline family college tax bracket income expense insurance estate will "
    "trust beneficiary allocation bond stock cash flow inflation pension annuity credit score loan "
    "refinance equity home rent lease car child care health plan deductible premium feel worried "
    "honestly understand clarity option priority compare monthly payment balance interest years "
    "decision confident plan together step next week review numbers spouse career bonus salary"
).split()

SYSTEM_PROMPT = (
    "You are Elena Marquez, CFP, founder of Marquez Family Wealth, a fee-only financial planner with "
    "eighteen years of experience helping families make calm, informed decisions about money. "
    "Core philosophy: money is emotional before it is mathematical; every plan starts with what the "
    "client values; there are no stupid questions, only unasked ones; progress beats perfection. "
    "Tone: warm, plain-spoken, patient and precise. Techniques: reflective listening, naming the "
    "feeling before the fact, breaking big decisions into small next steps, using the client's own "
    "numbers, checking understanding, and summarising options with their trade-offs. "
    "Never: give individualized securities recommendations, promise returns, shame the client for "
    "past decisions, use jargon without explaining it, or rush a client who is anxious. "
    "When the client is overwhelmed, slow down and offer one concrete action. When the client is "
    "confident but uninformed, affirm the energy and add the missing context gently. Always end a "
    "substantive answer with a question that invites the client to share what matters to them. "
)


def _text(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _conversation(index: int, rng: random.Random) -> dict:
    cid = f"00000000-0000-4000-8000-{index:012d}"
    n_pairs = rng.randint(3, 5)
    persona = f"persona_{index % 7}"
    arc = f"arc_{index % 5}"
    topic = f"topic_{index % 11}"
    history: list[dict] = []
    pairs = []
    for i in range(n_pairs):
        question = _text(rng, 250, 450)
        answer = _text(rng, 600, 1100)
        quality = round(rng.uniform(2.5, 5.0), 1)
        pairs.append(
            {
                "id": f"{cid}_turn{i + 1}",
                "conversation_id": cid,
                "turn_number": i + 1,
                "conversation_metadata": {
                    "client_persona": "David Chen - The Pragmatic Optimist",
                    "persona_archetype": persona,
                    "client_background": "Age 37, male, Urban/Suburban, Married, 2 children; High earner "
                    "with a 30-year mortgage at 6.1%, maxing 401(k), little emergency savings",
                    "emotional_arc": "Confusion → Clarity",
                    "emotional_arc_key": arc,
                    "training_topic": "Accelerated Mortgage Payoff",
                    "training_topic_key": topic,
                    "session_context": "First planning meeting after a bonus; client wants to know whether "
                    "to prepay the mortgage or invest.",
                    "conversation_phase": "initial_opportunity_exploration",
                    "expected_outcome": "Client understands the trade-off and picks a first step.",
                },
                "system_prompt": SYSTEM_PROMPT,
                "conversation_history": list(history),
                "current_user_input": question,
                "emotional_context": {
                    "primary_emotion": "confusion",
                    "secondary_emotions": ["hope", "anxiety"],
                    "intensity": round(rng.uniform(0.2, 0.9), 2),
                },
                "target_response": answer,
                "training_metadata": {
                    "difficulty_level": "moderate",
                    "key_learning_objective": "Explain prepayment versus investing trade-offs with empathy",
                    "demonstrates_skills": ["empathy", "clarity", "reframing"],
                    "conversation_turn": i + 1,
                    "emotional_progression_target": "clarity",
                    "quality_score": quality,
                    "quality_criteria": {
                        "empathy_score": 4,
                        "clarity_score": 3.5,
                        "appropriateness_score": 4,
                        "brand_voice_alignment": 4.5,
                    },
                    "human_reviewed": index % 10 == 0,
                    "reviewer_notes": None,
                    "use_as_seed_example": False,
                    "generate_variations_count": 0,
                },
            }
        )
        history.append({"turn_number": 2 * i + 1, "role": "user", "content": question})
        history.append({"turn_number": 2 * i + 2, "role": "assistant", "content": answer})
    return {
        "dataset_metadata": {
            "dataset_name": f"fp_conversation_{cid}",
            "version": "1.0.0",
            "created_date": "2025-12-01",
            "vertical": "financial_planning_consultant",
            "total_conversations": 1,
            "total_turns": 2 * n_pairs,
        },
        "consultant_profile": CONSULTANT,
        "input_parameters": {
            "persona_id": f"id-{persona}",
            "persona_key": persona,
            "persona_name": "David Chen",
            "persona_archetype": "The Pragmatic Optimist",
            "emotional_arc_id": f"id-{arc}",
            "emotional_arc_key": arc,
            "emotional_arc_name": "Confusion → Clarity",
            "training_topic_id": f"id-{topic}",
            "training_topic_key": topic,
            "training_topic_name": "Accelerated Mortgage Payoff",
        },
        "training_pairs": pairs,
    }


CONSULTANT = {
    "name": "Elena Marquez",
    "business": "Marquez Family Wealth",
    "expertise": "Holistic financial planning for families",
    "years_experience": 18,
    "core_philosophy": {"principle_1": "Money is emotional before it is mathematical"},
    "communication_style": {"tone": "warm, plain-spoken", "techniques": ["reflective listening"], "avoid": ["jargon"]},
}


def build_enriched(path: Path, min_pairs: int, seed: int = 0) -> tuple[int, int]:
    """Write enriched docs (one per line) until >= min_pairs pairs; return (conversations, pairs)."""
    from lora_assets.schemas.training import EnrichedConversation

    rng = random.Random(seed)
    conversations = pairs = 0
    with path.open("wb") as fh:
        while pairs < min_pairs:
            doc = _conversation(conversations, rng)
            if conversations == 0:
                EnrichedConversation.model_validate(doc)  # the synthetic shape is schema-valid
            fh.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            conversations += 1
            pairs += len(doc["training_pairs"])
    return conversations, pairs


# ------------------------------------------------------------------------------------ children


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child_ours(enriched: Path, workdir: Path) -> dict:
    import shutil

    from lora_assets.core.aggregate import TRAINING_JSON_END, AggregateWriter, training_json_head
    from lora_assets.schemas.scaffolding import ConsultantProfile
    from lora_assets.schemas.training import EnrichedConversation

    consultant = ConsultantProfile.model_validate(CONSULTANT)
    jsonl_path = workdir / "training.jsonl"
    json_path = workdir / "training.json"
    rss_before = _peak_rss_mb()
    c0 = time.process_time()
    t0 = time.perf_counter()
    validate = EnrichedConversation.model_validate_json
    body_path = workdir / "training.json.pairs"
    with enriched.open("rb") as src, jsonl_path.open("wb") as jsonl_out, body_path.open("wb") as body_out:
        writer = AggregateWriter(jsonl_out, body_out)
        for line in src:
            writer.add(validate(line))
    t1 = time.perf_counter()
    stats = writer.stats
    head = training_json_head(dataset_name="bench", created_date="2025-12-01T00:00:00Z", consultant=consultant,
                              stats=stats)
    with body_path.open("rb") as body, json_path.open("wb") as json_out:
        json_out.write(head)
        shutil.copyfileobj(body, json_out, 1 << 20)
        json_out.write(TRAINING_JSON_END)
    body_path.unlink()
    written = json_path.stat().st_size
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "cpu_seconds": time.process_time() - c0,
        "seconds_jsonl": t1 - t0,
        "seconds_json": t2 - t1,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_imports_mb": rss_before,
        "conversations": stats.conversation_count,
        "training_pairs": stats.total_training_pairs,
        "jsonl_bytes": stats.jsonl_bytes,
        "json_bytes": written,
    }


def child_floor(json_path: Path, workdir: Path) -> dict:
    c0 = time.process_time()
    t0 = time.perf_counter()
    with json_path.open("rb") as fh:
        doc = json.load(fh)
    t1 = time.perf_counter()
    with (workdir / "floor.json").open("w", encoding="utf-8") as out:
        json.dump(doc, out, ensure_ascii=False, separators=(",", ":"))
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "cpu_seconds": time.process_time() - c0,
        "seconds_load": t1 - t0,
        "seconds_dump": t2 - t1,
        "peak_rss_mb": _peak_rss_mb(),
        # Reading it back doubles as the check that our output is one valid JSON document.
        "training_pairs": len(doc["training_pairs"]),
        "total_conversations": doc["dataset_metadata"]["total_conversations"],
    }


def _run_child(kind: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000, help="minimum training pairs (default 100000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "aggregate.json")
    parser.add_argument("--child", choices=["ours", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "ours":
        print(json.dumps(child_ours(args.input, args.workdir)))
        return 0
    if args.child == "floor":
        print(json.dumps(child_floor(args.input, args.workdir)))
        return 0

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_aggregate_") as tmp:
        work = Path(tmp)
        enriched = work / "enriched.jsonl"
        t0 = time.perf_counter()
        conversations, pairs = build_enriched(enriched, args.pairs)
        build_seconds = time.perf_counter() - t0
        enriched_mb = round(enriched.stat().st_size / 1e6, 1)

        ours = _run_child("ours", "--input", str(enriched), "--workdir", str(work))
        floor = _run_child("floor", "--input", str(work / "training.json"), "--workdir", str(work))

    if not (ours["training_pairs"] == floor["training_pairs"] == pairs):
        raise SystemExit(f"pair counts disagree: generated {pairs}, ours {ours['training_pairs']}, floor read {floor['training_pairs']}")
    if floor["total_conversations"] != conversations:
        raise SystemExit(f"conversation count in file {floor['total_conversations']} != generated {conversations}")

    ratio = ours["seconds"] / floor["seconds"]
    cpu_ratio = ours["cpu_seconds"] / floor["cpu_seconds"]
    result = {
        "benchmark": "aggregate",
        "python": sys.version.split()[0],
        "input": {
            "conversations": conversations,
            "training_pairs": pairs,
            "enriched_jsonl_mb": enriched_mb,
            "avg_pair_bytes": round(ours["jsonl_bytes"] / pairs),
            "training_json_mb": round(ours["json_bytes"] / 1e6, 1),
            "build_seconds": round(build_seconds, 2),
        },
        "ours": {k: round(v, 3) if isinstance(v, float) else v for k, v in ours.items()},
        "floor_json_load_dump": {k: round(v, 3) if isinstance(v, float) else v for k, v in floor.items()},
        "time_ratio": round(ratio, 3),
        "time_ratio_aim": TIME_RATIO_AIM,
        "time_ratio_ok": ratio <= TIME_RATIO_AIM,
        # CPU time (user + system) is steadier than wall time on a shared machine.
        "cpu_time_ratio": round(cpu_ratio, 3),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "peak_rss_aim_mb": PEAK_RSS_AIM_MB,
        "peak_rss_ok": ours["peak_rss_mb"] <= PEAK_RSS_AIM_MB,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["time_ratio_ok"] and result["peak_rss_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
