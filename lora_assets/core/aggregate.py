"""Training-file aggregation: many v4.0 enriched conversations -> one v4.0 aggregated JSON + JSONL.

Everything streams conversation by conversation: `AggregateWriter.add` writes each training pair
as one JSONL line the moment the conversation arrives and keeps only running totals; given a
second handle, it writes the same serialised pair there as an element of the aggregated
document's `training_pairs` array. The document's head (its metadata: totals known only once
every conversation is in) is `training_json_head`, which goes before that body, and
`TRAINING_JSON_END` after it. Memory stays flat however big the file is (the only
per-conversation state is the set of member ids, needed to refuse duplicates).

No storage knowledge: callers hand in binary file handles and models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import IO

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from lora_assets.schemas.scaffolding import ConsultantProfile
from lora_assets.schemas.training import (
    AggregateDatasetMetadata,
    EnrichedConversation,
    QualitySummary,
    ScaffoldingDistribution,
    TrainingPair,
)

AGGREGATE_VERSION = "4.0.0"

#: Distribution key for conversations without scaffolding (legacy, written before
#: `input_parameters` existed). Not a valid scaffolding key, so it cannot collide with one.
LEGACY_KEY = "(legacy)"

#: Quality histogram buckets: [0, 0.5), [0.5, 1.0), ..., [4.5, 5.0] (5.0 falls in the last one).
QUALITY_BUCKET_WIDTH = 0.5
QUALITY_BUCKETS = 10

# One serializer for every pair: built once, it dumps straight to compact UTF-8 JSON bytes in
# pydantic-core (no str round trip, no re-validation).
_PAIR_JSON = TypeAdapter(TrainingPair)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_NAME = 128


# --------------------------------------------------------------------------------------------
# Errors: one type per failure kind, each message names the offending thing.


class TrainingFileNameError(ValueError):
    """A training-file name that is unsafe as a storage key or not in the allowed alphabet."""


class DuplicateMemberError(ValueError):
    """A conversation offered twice to the same training file (the seed rule: block, don't skip)."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation {conversation_id!r} is already a member of this training file")
        self.conversation_id = conversation_id


class ConversationIdError(ValueError):
    """A conversation whose id cannot be determined, or whose pairs disagree about it."""


# --------------------------------------------------------------------------------------------
# Names


def validate_training_file_name(name: str) -> str:
    """Return `name` unchanged if it is a safe training-file name, else raise
    `TrainingFileNameError` naming the name and the reason.

    The name becomes a blob-key segment (`training-files/<name>/v<N>/…`) and a Dagster partition
    key, so it must not be able to escape its folder or hide itself.
    """
    if not isinstance(name, str):
        raise TrainingFileNameError(f"training file name {name!r}: must be a string, not {type(name).__name__}")
    reason: str | None = None
    if name == "":
        reason = "is empty"
    elif len(name) > _MAX_NAME:
        reason = f"is {len(name)} characters long (at most {_MAX_NAME})"
    elif any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in name):
        bad = next(ch for ch in name if ord(ch) < 32 or 127 <= ord(ch) < 160)
        reason = f"contains control character U+{ord(bad):04X}"
    elif "/" in name or "\\" in name:
        reason = "contains a path separator"
    elif ".." in name:
        reason = "contains '..'"
    elif name.startswith("."):
        reason = "starts with a dot (hidden file)"
    elif not _NAME_RE.match(name):
        reason = "may only contain letters, digits, '.', '_' and '-' and must start with a letter or digit"
    if reason is not None:
        raise TrainingFileNameError(f"training file name {name!r} {reason}")
    return name


# --------------------------------------------------------------------------------------------
# Per-conversation facts (the one definition shared by aggregation, split, filter and checks)


def conversation_id_of(conv: EnrichedConversation, conversation_id: str | None = None) -> str:
    """The conversation's id: the `conversation_id` its training pairs carry.

    `EnrichedConversation` has no id field of its own, so the pairs are the source. When the
    caller knows the id (from the DB) it may pass it; it must then agree with the pairs.
    """
    ids = {pair.conversation_id for pair in conv.training_pairs}
    if len(ids) > 1:
        raise ConversationIdError(
            f"enriched conversation {conv.dataset_metadata.dataset_name!r}: training pairs disagree "
            f"about conversation_id ({sorted(ids)})"
        )
    if conversation_id is not None:
        if ids and conversation_id not in ids:
            raise ConversationIdError(
                f"conversation {conversation_id!r}: its training pairs carry conversation_id {ids.pop()!r}"
            )
        return conversation_id
    if not ids:
        raise ConversationIdError(
            f"enriched conversation {conv.dataset_metadata.dataset_name!r} has no training pairs; "
            "pass conversation_id explicitly"
        )
    return ids.pop()


def scaffolding_keys(conv: EnrichedConversation) -> tuple[str | None, str | None, str | None]:
    """(persona_key, emotional_arc_key, training_topic_key) of a conversation.

    `input_parameters` is authoritative (resolved from the DB). Legacy conversations have none;
    their pairs' metadata is the fallback, and None means "not known".
    """
    params = conv.input_parameters
    if params is not None:
        return params.persona_key, params.emotional_arc_key, params.training_topic_key
    if conv.training_pairs:
        meta = conv.training_pairs[0].conversation_metadata
        return meta.persona_archetype, meta.emotional_arc_key, meta.training_topic_key
    return None, None, None


def conversation_quality(conv: EnrichedConversation) -> float | None:
    """A conversation's quality: the mean `quality_score` of its answered training pairs (a pair
    without a target teaches nothing and is not scored), rounded half-up to two decimals, the
    same figure enrichment stores in `conversations.quality_score`; None when no pair is
    answered. Quality statistics of a training file are taken over conversations, not pairs,
    so a long conversation does not weigh more than a short one."""
    return pairs_quality(conv.training_pairs)


def pairs_quality(pairs: Iterable[TrainingPair]) -> float | None:
    """`conversation_quality` of one conversation's pairs (also used to audit a built JSONL)."""
    scores = [p.training_metadata.quality_score for p in pairs if p.target_response is not None]
    if not scores:
        return None
    # Same arithmetic as enrichment's figure (plain sum, str -> Decimal), so the two agree to
    # the last digit, also on .xx5 boundaries.
    return float(Decimal(str(sum(scores) / len(scores))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def conversation_human_reviewed(conv: EnrichedConversation) -> bool:
    """True when a human reviewed the conversation, i.e. any of its pairs is marked reviewed
    (enrichment copies the conversation's flag onto every pair)."""
    return any(p.training_metadata.human_reviewed for p in conv.training_pairs)


def pair_scaffolding_keys(pair: TrainingPair) -> tuple[str, str, str]:
    """(persona, arc, topic) distribution keys of a pair; LEGACY_KEY where unknown."""
    meta = pair.conversation_metadata
    return tuple(k or LEGACY_KEY for k in (meta.persona_archetype, meta.emotional_arc_key, meta.training_topic_key))


def pair_training_chars(pair: TrainingPair) -> int:
    """Characters a trainer reads for one pair: system prompt, history, input and target."""
    return (
        len(pair.system_prompt)
        + sum(len(turn.content) for turn in pair.conversation_history)
        + len(pair.current_user_input)
        + len(pair.target_response or "")
    )


class MemberSummary(BaseModel):
    """The small per-conversation metadata a caller reads from the DB (no training text), enough
    to split, filter and describe a training file without loading conversations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_id: str = Field(min_length=1)
    persona_key: str | None = None
    arc_key: str | None = None
    topic_key: str | None = Field(default=None, description="None for legacy conversations.")
    quality_score: float | None = Field(default=None, ge=0, le=5)
    pair_count: int = Field(default=0, ge=0)
    turn_count: int = Field(default=0, ge=0)
    human_reviewed: bool = False

    @classmethod
    def from_conversation(cls, conv: EnrichedConversation, conversation_id: str | None = None) -> MemberSummary:
        """The summary of an enriched conversation, with the same definitions the aggregate uses."""
        persona, arc, topic = scaffolding_keys(conv)
        return cls(
            conversation_id=conversation_id_of(conv, conversation_id),
            persona_key=persona,
            arc_key=arc,
            topic_key=topic,
            quality_score=conversation_quality(conv),
            pair_count=len(conv.training_pairs),
            turn_count=conv.dataset_metadata.total_turns,
            human_reviewed=conversation_human_reviewed(conv),
        )


# --------------------------------------------------------------------------------------------
# Running statistics


def _round2(value: float | None) -> float | None:
    # The DB stores quality as NUMERIC(4,2); rounding here keeps file and DB metadata identical.
    return None if value is None else round(value, 2)


class AggregateStats(BaseModel):
    """Totals of an aggregate, computed while streaming. Exact values; `quality_summary` and
    `dataset_metadata` give the rounded v4.0 view written into the file and the DB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_count: int = 0
    total_training_pairs: int = 0
    total_turns: int = 0
    quality_scored_conversations: int = 0
    quality_sum: float = 0.0
    quality_min: float | None = None
    quality_max: float | None = None
    quality_histogram: list[int] = Field(default_factory=lambda: [0] * QUALITY_BUCKETS)
    human_reviewed_count: int = 0
    legacy_conversations: int = Field(default=0, description="Conversations without input_parameters.")
    scaffolding_distribution: ScaffoldingDistribution = Field(default_factory=ScaffoldingDistribution)
    training_chars: int = Field(default=0, description="Characters of system prompt + history + input + target over all pairs.")
    jsonl_lines: int = 0
    jsonl_bytes: int = 0

    @property
    def estimated_tokens(self) -> int:
        """Rough token count of the per-pair training text (characters / 4)."""
        return self.training_chars // 4

    @property
    def avg_quality(self) -> float | None:
        """Exact mean conversation quality (None when no conversation has a score)."""
        if not self.quality_scored_conversations:
            return None
        return self.quality_sum / self.quality_scored_conversations

    @property
    def quality_summary(self) -> QualitySummary:
        """The v4.0 `quality_summary`, rounded to two decimals like the DB columns."""
        return QualitySummary(
            avg_quality_score=_round2(self.avg_quality),
            min_quality_score=_round2(self.quality_min),
            max_quality_score=_round2(self.quality_max),
            human_reviewed_count=self.human_reviewed_count,
        )

    def dataset_metadata(self, *, dataset_name: str, created_date: str | date | datetime) -> AggregateDatasetMetadata:
        """The v4.0 `dataset_metadata` of the aggregated document these stats describe."""
        return AggregateDatasetMetadata(
            dataset_name=dataset_name,
            version=AGGREGATE_VERSION,
            created_date=_iso(created_date),
            total_conversations=self.conversation_count,
            total_turns=self.total_turns,
            quality_summary=self.quality_summary,
            scaffolding_distribution=self.scaffolding_distribution,
        )


def _iso(value: str | date | datetime) -> str:
    return value if isinstance(value, str) else value.isoformat()


def quality_bucket(score: float) -> int:
    """Index of the histogram bucket holding `score` (0..QUALITY_BUCKETS-1)."""
    return min(max(int(score // QUALITY_BUCKET_WIDTH), 0), QUALITY_BUCKETS - 1)


# --------------------------------------------------------------------------------------------
# The streaming writer


class AggregateWriter:
    """Writes the JSONL of a training file conversation by conversation and keeps its stats;
    with `json_out`, also the body of the aggregated document (its `training_pairs` elements).

        writer = AggregateWriter(jsonl_out, json_out)
        for conv in conversations:
            writer.add(conv)
        document = training_json_head(..., stats=writer.stats) + <json_out's bytes> + TRAINING_JSON_END

    Each training pair becomes one compact JSON line (UTF-8, `\\n`-terminated), and the same bytes
    one line of the document's array. A conversation id offered twice raises
    `DuplicateMemberError` and writes nothing.
    """

    def __init__(self, jsonl_out: IO[bytes], json_out: IO[bytes] | None = None) -> None:
        self._out = jsonl_out
        self._json_out = json_out
        self._members: set[str] = set()
        self._conversations = 0
        self._pairs = 0
        self._turns = 0
        self._q_count = 0
        self._q_sum = 0.0
        self._q_min: float | None = None
        self._q_max: float | None = None
        self._histogram = [0] * QUALITY_BUCKETS
        self._reviewed = 0
        self._legacy = 0
        self._personas: dict[str, int] = {}
        self._arcs: dict[str, int] = {}
        self._topics: dict[str, int] = {}
        self._chars = 0
        self._bytes = 0

    @property
    def member_ids(self) -> frozenset[str]:
        """Ids of the conversations added so far."""
        return frozenset(self._members)

    def add(self, conv: EnrichedConversation, *, conversation_id: str | None = None) -> str:
        """Append `conv`'s training pairs to the JSONL and fold it into the stats; return its id.

        Pairs are written in `turn_number` order. Raises `DuplicateMemberError` if the id was
        already added, `ConversationIdError` if the id cannot be determined.
        """
        cid = conversation_id_of(conv, conversation_id)
        if cid in self._members:
            raise DuplicateMemberError(cid)

        pairs = conv.training_pairs
        if any(pairs[i].turn_number > pairs[i + 1].turn_number for i in range(len(pairs) - 1)):
            pairs = sorted(pairs, key=lambda p: p.turn_number)

        # Serialise first, write once: a failure above leaves the output untouched.
        dump = _PAIR_JSON.dump_json
        lines = [dump(p) for p in pairs]
        chunk = b"".join([line + b"\n" for line in lines])
        self._out.write(chunk)
        if self._json_out is not None and lines:
            # Each element on its own line, after "\n" (the first) or ",\n": the array as
            # `scan_training_json` reads it, a pair per line.
            self._json_out.write((b"," if self._pairs else b"") + b"\n" + b",\n".join(lines))
        self._members.add(cid)

        self._conversations += 1
        self._pairs += len(pairs)
        self._turns += conv.dataset_metadata.total_turns
        self._bytes += len(chunk)
        self._chars += sum(pair_training_chars(p) for p in pairs)

        quality = conversation_quality(conv)
        if quality is not None:
            self._q_count += 1
            self._q_sum += quality
            self._q_min = quality if self._q_min is None else min(self._q_min, quality)
            self._q_max = quality if self._q_max is None else max(self._q_max, quality)
            self._histogram[quality_bucket(quality)] += 1
        if conversation_human_reviewed(conv):
            self._reviewed += 1
        if conv.input_parameters is None:
            self._legacy += 1

        persona, arc, topic = scaffolding_keys(conv)
        for counts, key in ((self._personas, persona), (self._arcs, arc), (self._topics, topic)):
            k = key or LEGACY_KEY
            counts[k] = counts.get(k, 0) + 1
        return cid

    @property
    def stats(self) -> AggregateStats:
        """A snapshot of the totals so far (distribution keys sorted, for stable output)."""
        return AggregateStats(
            conversation_count=self._conversations,
            total_training_pairs=self._pairs,
            total_turns=self._turns,
            quality_scored_conversations=self._q_count,
            quality_sum=self._q_sum,
            quality_min=self._q_min,
            quality_max=self._q_max,
            quality_histogram=list(self._histogram),
            human_reviewed_count=self._reviewed,
            legacy_conversations=self._legacy,
            scaffolding_distribution=ScaffoldingDistribution(
                personas=dict(sorted(self._personas.items())),
                emotional_arcs=dict(sorted(self._arcs.items())),
                training_topics=dict(sorted(self._topics.items())),
            ),
            training_chars=self._chars,
            jsonl_lines=self._pairs,
            jsonl_bytes=self._bytes,
        )


# --------------------------------------------------------------------------------------------
# The aggregated document

#: Ends the header line of the aggregated document: the pairs follow, one per line.
_PAIRS_OPENING = b',"training_pairs":['
#: What follows the last pair of the aggregated document (after its body from `AggregateWriter`).
TRAINING_JSON_END = b"\n]}\n"


def training_json_head(*, dataset_name: str, created_date: str | date | datetime, consultant: ConsultantProfile,
                       stats: AggregateStats) -> bytes:
    """The first line of the v4.0 aggregated training document: its `dataset_metadata` (from
    `stats`, the writer's totals once every conversation is in) and `consultant_profile`, opening
    the `training_pairs` array whose elements `AggregateWriter` wrote to its `json_out`."""
    meta = stats.dataset_metadata(dataset_name=dataset_name, created_date=created_date)
    return (b'{"dataset_metadata":' + meta.model_dump_json().encode() + b',"consultant_profile":'
            + consultant.model_dump_json().encode() + _PAIRS_OPENING)


class TrainingJsonScan(BaseModel):
    """What `scan_training_json` read back from an aggregated document."""

    header: dict | None = Field(default=None, description="dataset_metadata + consultant_profile, as JSON.")
    header_error: str | None = None
    pairs: int = 0


def scan_training_json(lines: Iterable[bytes]) -> TrainingJsonScan:
    """Read back, streamed line by line, a document `training_json_head` and `AggregateWriter`
    wrote: its header (everything but `training_pairs`) and how many pairs it holds. The one
    reader of that layout, next to its writer, so callers (the checks) never depend on it."""
    it = iter(lines)
    head = next(it, b"").rstrip(b"\r\n")
    scan = TrainingJsonScan()
    if not head.endswith(_PAIRS_OPENING):
        scan.header_error = "the first line is not the document header (it must open the training_pairs array)"
    else:
        try:
            header = json.loads(head[: -len(_PAIRS_OPENING)] + b"}")
            scan.header = header if isinstance(header, dict) else None
        except ValueError as exc:
            scan.header_error = str(exc).splitlines()[0]
    scan.pairs = sum(1 for line in it if line.startswith(b"{"))
    return scan
