"""Aggregation of enriched conversations into the v4.0 training file (JSON + JSONL).

Also home of this test package's small EnrichedConversation factory (`make_conversation`),
imported by the other training-file core tests.
"""

from __future__ import annotations

import io
import json
import math

import pytest

from lora_assets.core.aggregate import (
    LEGACY_KEY,
    TRAINING_JSON_END,
    AggregateWriter,
    ConversationIdError,
    DuplicateMemberError,
    MemberSummary,
    TrainingFileNameError,
    conversation_quality,
    scan_training_json,
    training_json_head,
    validate_training_file_name,
)
from lora_assets.schemas.conversation import EmotionalContext, InputParameters
from lora_assets.schemas.scaffolding import CommunicationStyle, ConsultantProfile
from lora_assets.schemas.training import (
    EnrichedConversation,
    HistoryTurn,
    IndividualDatasetMetadata,
    PairConversationMetadata,
    QualityCriteria,
    TrainingFileDocument,
    TrainingMetadata,
    TrainingPair,
)

# ---------------------------------------------------------------------------------------------
# Factory

CONSULTANT = ConsultantProfile(
    name="Elena Marquez",
    business="Marquez Family Wealth",
    expertise="Holistic financial planning for families",
    years_experience=18,
    core_philosophy={"principle_1": "Feelings first, then figures"},
    communication_style=CommunicationStyle(tone="warm, plain-spoken", techniques=["reflective listening"]),
)

SYSTEM_PROMPT = "You are Elena Marquez, a warm and precise financial planner. Acknowledge feelings before facts."


def _answers(cid: str, n: int) -> list[str]:
    return [
        f"Answer {i + 1} for {cid}: it makes sense to feel unsure here. Let us look at your mortgage "
        f"rate, your emergency fund and the timeline you care about before deciding anything {i}."
        for i in range(n)
    ]


def make_conversation(
    cid: str = "conv-1",
    *,
    pairs: int = 3,
    persona: str = "pragmatic_optimist",
    arc: str = "confusion_to_clarity",
    topic: str = "mortgage_payoff_strategy",
    quality: float | list[float] = 4.0,
    human_reviewed: bool = False,
    legacy: bool = False,
    answers: list[str] | None = None,
    questions: list[str] | None = None,
    unanswered_last: bool = False,
    system_prompt: str = SYSTEM_PROMPT,
) -> EnrichedConversation:
    """A schema-valid v4.0 enriched conversation with `pairs` user turns.

    `answers`/`questions` override the generated texts; `unanswered_last` leaves the final user
    turn without a target; `legacy` drops input_parameters and the pairs' scaffolding keys.
    """
    answers = list(answers) if answers is not None else _answers(cid, pairs)
    questions = list(questions) if questions is not None else [
        f"Question {i + 1} from {cid}: should I pay off my mortgage early or invest the difference? ({i})"
        for i in range(pairs)
    ]
    qualities = quality if isinstance(quality, list) else [quality] * pairs
    history: list[HistoryTurn] = []
    out: list[TrainingPair] = []
    for i in range(pairs):
        target = None if (unanswered_last and i == pairs - 1) else answers[i]
        out.append(
            TrainingPair(
                id=f"{cid}_turn{i + 1}",
                conversation_id=cid,
                turn_number=i + 1,
                conversation_metadata=PairConversationMetadata(
                    client_persona="David Chen - The Pragmatic Optimist",
                    persona_archetype=None if legacy else persona,
                    client_background="Age 37, male, Urban/Suburban; High earner with a mortgage",
                    emotional_arc=None if legacy else "Confusion → Clarity",
                    emotional_arc_key=None if legacy else arc,
                    training_topic=None if legacy else "Accelerated Mortgage Payoff",
                    training_topic_key=None if legacy else topic,
                    session_context="First meeting",
                    conversation_phase="initial_opportunity_exploration",
                    expected_outcome="Client understands the trade-off",
                ),
                system_prompt=system_prompt,
                conversation_history=list(history),
                current_user_input=questions[i],
                emotional_context=EmotionalContext(primary_emotion="confusion", intensity=0.6),
                target_response=target,
                training_metadata=TrainingMetadata(
                    difficulty_level="moderate",
                    key_learning_objective="Explain mortgage prepayment trade-offs",
                    demonstrates_skills=["empathy", "clarity"],
                    conversation_turn=i + 1,
                    emotional_progression_target="clarity",
                    quality_score=qualities[i],
                    quality_criteria=QualityCriteria(
                        empathy_score=4, clarity_score=4, appropriateness_score=4, brand_voice_alignment=4
                    ),
                    human_reviewed=human_reviewed,
                ),
            )
        )
        history.append(HistoryTurn(turn_number=2 * i + 1, role="user", content=questions[i]))
        if target is not None:
            history.append(HistoryTurn(turn_number=2 * i + 2, role="assistant", content=target))
    params = None
    if not legacy:
        params = InputParameters(
            persona_id=f"id-{persona}",
            persona_key=persona,
            persona_name="David Chen",
            persona_archetype="The Pragmatic Optimist",
            emotional_arc_id=f"id-{arc}",
            emotional_arc_key=arc,
            emotional_arc_name="Confusion → Clarity",
            training_topic_id=f"id-{topic}",
            training_topic_key=topic,
            training_topic_name="Accelerated Mortgage Payoff",
        )
    turns = 2 * pairs - (1 if unanswered_last else 0)
    return EnrichedConversation(
        dataset_metadata=IndividualDatasetMetadata(
            dataset_name=f"fp_conversation_{cid}", created_date="2025-12-01", total_turns=turns
        ),
        consultant_profile=CONSULTANT,
        input_parameters=params,
        training_pairs=out,
    )


def build(convs: list[EnrichedConversation], name: str = "prod_batch_001") -> tuple[bytes, bytes, AggregateWriter]:
    """Run the aggregate path in memory; return (jsonl, json, writer): the document is its head
    (made from the writer's stats once every conversation is in), the body the writer wrote, its end."""
    jsonl, body = io.BytesIO(), io.BytesIO()
    writer = AggregateWriter(jsonl, body)
    for conv in convs:
        writer.add(conv)
    head = training_json_head(dataset_name=name, created_date="2025-12-01T12:00:00Z", consultant=CONSULTANT,
                              stats=writer.stats)
    return jsonl.getvalue(), head + body.getvalue() + TRAINING_JSON_END, writer


# ---------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    "name",
    ["prod_batch_001", "a", "A-b.c_d", "fp-2025-12-01", "x" * 128, "v4.0.json-export"],
)
def test_name_accepts_normal_names(name: str) -> None:
    assert validate_training_file_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        (".hidden", "starts with a dot"),
        ("", "is empty"),
        ("x" * 200, "200 characters"),
        ("bad\nname", "U+000A"),
        ("tab\tname", "U+0009"),
        ("nul\x00", "U+0000"),
        ("del\x7f", "U+007F"),
        ("a..b", "'..'"),
        ("has space", "may only contain"),
        ("-leading", "must start with a letter or digit"),
        ("ümlaut", "may only contain"),
    ],
)
def test_name_rejects_unsafe_names_with_reason(name: str, reason: str) -> None:
    with pytest.raises(TrainingFileNameError) as err:
        validate_training_file_name(name)
    assert repr(name) in str(err.value)
    assert reason in str(err.value)


# ---------------------------------------------------------------------------------------------
# Aggregate JSON + JSONL


def _mixed() -> list[EnrichedConversation]:
    return [
        make_conversation("c1", pairs=3, quality=[3.0, 4.0, 5.0], human_reviewed=True),
        make_conversation("c2", pairs=2, persona="anxious_planner", arc="fear_to_confidence", quality=3.1),
        make_conversation("c3", pairs=4, persona="anxious_planner", topic="estate_planning_basics", quality=4.5),
        make_conversation("c4", pairs=2, legacy=True, quality=2.0),
        # The unanswered last turn's low score does not count: nothing to learn from it.
        make_conversation("c5", pairs=3, unanswered_last=True, quality=[3.8, 3.9, 1.0]),
    ]


def test_json_validates_as_training_file_document_and_metadata_matches_its_pairs() -> None:
    convs = _mixed()
    jsonl, raw, _ = build(convs)
    doc = TrainingFileDocument.model_validate_json(raw)
    meta = doc.dataset_metadata

    assert meta.version == "4.0.0"
    assert meta.dataset_name == "prod_batch_001"
    assert meta.created_date == "2025-12-01T12:00:00Z"
    assert doc.consultant_profile == CONSULTANT

    # Recompute every figure from the pairs the document holds.
    by_conv: dict[str, list[TrainingPair]] = {}
    for pair in doc.training_pairs:
        by_conv.setdefault(pair.conversation_id, []).append(pair)
    assert meta.total_conversations == len(by_conv) == 5
    assert len(doc.training_pairs) == sum(len(c.training_pairs) for c in convs)
    assert meta.total_turns == sum(c.dataset_metadata.total_turns for c in convs)
    qualities = []
    for ps in by_conv.values():
        answered = [p.training_metadata.quality_score for p in ps if p.target_response is not None]
        qualities.append(round(sum(answered) / len(answered), 2))
    qs = meta.quality_summary
    assert qs.avg_quality_score == round(sum(qualities) / len(qualities), 2)
    assert qs.min_quality_score == round(min(qualities), 2)
    assert qs.max_quality_score == round(max(qualities), 2)
    assert qs.human_reviewed_count == sum(
        any(p.training_metadata.human_reviewed for p in ps) for ps in by_conv.values()
    ) == 1

    personas: dict[str, int] = {}
    for ps in by_conv.values():
        key = ps[0].conversation_metadata.persona_archetype or LEGACY_KEY
        personas[key] = personas.get(key, 0) + 1
    dist = meta.scaffolding_distribution
    assert dist.personas == personas == {"pragmatic_optimist": 2, "anxious_planner": 2, LEGACY_KEY: 1}
    assert dist.emotional_arcs == {"confusion_to_clarity": 3, "fear_to_confidence": 1, LEGACY_KEY: 1}
    assert dist.training_topics == {"mortgage_payoff_strategy": 3, "estate_planning_basics": 1, LEGACY_KEY: 1}

    # Pairs are the JSONL lines, in order, byte for byte as JSON values.
    lines = jsonl.splitlines()
    assert [json.loads(line) for line in lines] == json.loads(raw)["training_pairs"]


def test_jsonl_lines_equal_total_training_pairs_and_are_valid_pairs() -> None:
    convs = _mixed()
    jsonl, _, writer = build(convs)
    lines = jsonl.split(b"\n")
    assert lines[-1] == b""  # newline-terminated
    lines = lines[:-1]
    stats = writer.stats
    assert len(lines) == stats.total_training_pairs == stats.jsonl_lines == 14
    assert stats.jsonl_bytes == len(jsonl)
    for line in lines:
        TrainingPair.model_validate_json(line)
        assert b"\n" not in line
    # Compact: no pretty printing inside a line.
    assert b'", "' not in lines[0]


def test_stats_exact_values_and_tokens() -> None:
    convs = _mixed()
    _, _, writer = build(convs)
    s = writer.stats
    assert s.conversation_count == 5
    assert s.legacy_conversations == 1
    assert s.quality_min == 2.0 and s.quality_max == 4.5
    assert math.isclose(s.avg_quality or 0, (4.0 + 3.1 + 4.5 + 2.0 + 3.85) / 5)
    assert sum(s.quality_histogram) == 5
    chars = 0
    for conv in convs:
        for p in conv.training_pairs:
            chars += len(p.system_prompt) + len(p.current_user_input) + len(p.target_response or "")
            chars += sum(len(t.content) for t in p.conversation_history)
    assert s.training_chars == chars
    assert s.estimated_tokens == chars // 4
    assert conversation_quality(convs[0]) == 4.0
    assert conversation_quality(convs[4]) == 3.85
    assert conversation_quality(make_conversation("q", pairs=3, quality=[3.0, 3.0, 3.1])) == 3.03  # 2 decimals
    assert conversation_quality(make_conversation("q", pairs=2, quality=[4.0, 4.01])) == 4.01  # half up
    assert conversation_quality(make_conversation("n", pairs=1, unanswered_last=True)) is None


def test_duplicate_member_refused_naming_it_and_nothing_written() -> None:
    out = io.BytesIO()
    writer = AggregateWriter(out)
    writer.add(make_conversation("dup-7"))
    before = out.getvalue()
    with pytest.raises(DuplicateMemberError) as err:
        writer.add(make_conversation("dup-7", quality=1.0))
    assert "dup-7" in str(err.value)
    assert err.value.conversation_id == "dup-7"
    assert out.getvalue() == before
    assert writer.stats.conversation_count == 1


def test_pairs_disagreeing_about_their_conversation_are_refused() -> None:
    conv = make_conversation("a")
    bad = conv.model_copy(update={"training_pairs": [*conv.training_pairs, make_conversation("b").training_pairs[0]]})
    with pytest.raises(ConversationIdError, match="disagree"):
        AggregateWriter(io.BytesIO()).add(bad)
    with pytest.raises(ConversationIdError, match="'other'"):
        AggregateWriter(io.BytesIO()).add(conv, conversation_id="other")


def test_empty_aggregate_is_a_valid_document() -> None:
    jsonl, raw, _ = build([])
    assert jsonl == b""
    doc = TrainingFileDocument.model_validate_json(raw)
    assert doc.training_pairs == []
    assert doc.dataset_metadata.quality_summary.avg_quality_score is None


def test_the_document_holds_the_jsonl_lines_one_pair_per_line_under_its_head() -> None:
    """The document's pairs are the JSONL's lines byte for byte, each on a line of its own, so
    `scan_training_json` reads the head from the first line and counts the pairs line by line;
    conversations without pairs add nothing (no empty element, no stray comma)."""
    jsonl_out, body = io.BytesIO(), io.BytesIO()
    writer = AggregateWriter(jsonl_out, body)
    writer.add(make_conversation("c1", pairs=2))
    writer.add(make_conversation("c0", pairs=0), conversation_id="c0")
    writer.add(make_conversation("c2", pairs=3))
    jsonl = jsonl_out.getvalue()
    raw = training_json_head(dataset_name="x", created_date="2025-12-01", consultant=CONSULTANT,
                             stats=writer.stats) + body.getvalue() + TRAINING_JSON_END
    head, *pairs, end, nothing = raw.split(b"\n")
    assert (end, nothing) == (b"]}", b"")
    assert [line.removesuffix(b",") for line in pairs] == jsonl.splitlines()
    assert [line.endswith(b",") for line in pairs] == [True] * 4 + [False]
    scan = scan_training_json(raw.splitlines(keepends=True))
    assert scan.header_error is None and scan.pairs == writer.stats.total_training_pairs == 5
    assert scan.header["dataset_metadata"]["total_conversations"] == 3  # type: ignore[index]
    assert len(TrainingFileDocument.model_validate_json(raw).training_pairs) == 5


def test_a_large_document_is_valid_json() -> None:
    convs = [make_conversation(f"c{i}", pairs=4) for i in range(400)]  # > 1 MiB of JSONL
    jsonl, raw, writer = build(convs)
    assert len(jsonl) > 1 << 20
    doc = TrainingFileDocument.model_validate_json(raw)
    assert len(doc.training_pairs) == writer.stats.total_training_pairs == 1600


def test_member_summary_from_conversation() -> None:
    conv = make_conversation("m1", pairs=2, quality=[3.0, 4.0], human_reviewed=True)
    summary = MemberSummary.from_conversation(conv)
    assert summary == MemberSummary(
        conversation_id="m1",
        persona_key="pragmatic_optimist",
        arc_key="confusion_to_clarity",
        topic_key="mortgage_payoff_strategy",
        quality_score=3.5,
        pair_count=2,
        turn_count=4,
        human_reviewed=True,
    )
    legacy = MemberSummary.from_conversation(make_conversation("m2", legacy=True))
    assert legacy.topic_key is None and legacy.persona_key is None


def test_non_ascii_text_round_trips() -> None:
    conv = make_conversation("u1", pairs=1, answers=["Ça va — 401(k) → Roth? ✓ 日本"])
    jsonl, raw, _ = build([conv])
    assert "Ça va — 401(k) → Roth? ✓ 日本".encode() in jsonl
    doc = TrainingFileDocument.model_validate_json(raw)
    assert doc.training_pairs[0].target_response == "Ça va — 401(k) → Roth? ✓ 日本"
