"""The build of a training-file version, outside Dagster: claim the next version → quality and
Claude-judge filters → exact/near-duplicate removal (one GET per member), streaming the JSONL and
the JSON document meanwhile → seeded split by conversation → stream the exports → dataset card →
record the version row. Either every output of the version is stored and recorded, or none is
(every key is removed, every upload aborted and the version released on any failure).

Plain Python over the domain DB (an SQLAlchemy engine) and a `BlobStore`; the `training_files`
asset only reads its partition, config and resources, calls `build_training_file` and turns a
`BuildError` into a run failure.
"""

from __future__ import annotations

import hashlib
import pickle
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import IO, Any, overload

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from lora_assets.core.aggregate import TRAINING_JSON_END, AggregateStats, AggregateWriter, training_json_head
from lora_assets.core.card import SourceBatch, dataset_card
from lora_assets.core.aggregate import MemberSummary
from lora_assets.core.dedup import DedupDecision, Deduplicator, DedupStats, TargetTexts, quality_filter
from lora_assets.core.export import ExportStats, ExportWriter, Rendered, axolotl_config, render
from lora_assets.core.leakage import ExampleMeasure, LeakageReport, LeakageThresholds
from lora_assets.core.tokens import LengthReport, TokenizerLoadError, token_counter
from lora_assets.core.split import MIN_TURN_WORDS, SharedTurns, SplitReport, grouped_split
from lora_assets.schemas import ConsultantProfile, EnrichedConversation, EnrichmentStatus
from lora_assets.store import db as dbq
from lora_assets.store import training_files as tfq
from lora_assets.store.blobs import READ_CHUNK, BlobStore, batched, bounded_map, frozen_heap, release_freed_memory
from lora_assets.training_stats import APPROVE, BuildMeasures, Measured, filters_run, is_rejected, with_review

VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0
#: Members parsed ahead of dedup and `Deduplicator.prepare`d together (their signatures in one
#: numpy pass): 32 parsed conversations held at a time.
_DEDUP_BATCH = 32

#: Output files of a version, by format name (what `training-file download --format` takes).
OUTPUTS = {
    "json": "{name}.json",
    "jsonl": "{name}.jsonl",
    "messages-train": "train.messages.jsonl",
    "messages-validation": "validation.messages.jsonl",
    "openai-train": "openai.train.jsonl",
    "openai-validation": "openai.validation.jsonl",
    "sharegpt-train": "sharegpt.train.jsonl",
    "sharegpt-validation": "sharegpt.validation.jsonl",
    "parquet": "pairs.parquet",
    "axolotl": "axolotl.yml",
    "card": "README.md",
}
#: Formats pass 2 writes (the JSON and JSONL are written in pass 1, the other two after pass 2).
_EXPORTED = tuple(fmt for fmt in OUTPUTS if fmt not in ("json", "jsonl", "axolotl", "card"))
_SPLIT_FILES = tuple((fmt, side) for fmt in ("messages", "openai", "sharegpt") for side in ("train", "validation"))


def version_prefix(name: str, version: int) -> str:
    """Blob key prefix of version `version` of training file `name`."""
    return f"training-files/{name}/v{version}"


class BuildError(ValueError):
    """A build a user can fix: the message names the training file, the thing and the reason."""


class MemberFileError(Exception):
    """A member's enriched.json cannot be used; names the conversation, the file and why."""


class BuildPlan(BaseModel):
    """What to build: the next version of training file `name`, split this way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    validation_fraction: float = Field(default=VALIDATION_FRACTION, gt=0, lt=1)
    split_seed: int = SPLIT_SEED
    tokenizer: str | None = Field(
        default=None, description="Local tokenizer.json (or HF tokenizer directory) to count tokens with; "
        "None: the labelled chars/4 estimate.")
    max_length: int | None = Field(
        default=None, ge=1, description="Training max_length to judge truncation at; None: the recommended one.")
    leakage_thresholds: LeakageThresholds = Field(default_factory=LeakageThresholds)


class OutputFile(BaseModel):
    """One stored output of a version."""

    path: str
    bytes: int
    lines: int | None = None
    rows: int | None = None


class KeptMember(BaseModel):
    """A member that made it into the version, as a person reads it in the members table."""

    conversation_id: str
    batch_id: str | None = None
    batch_name: str | None = None
    persona_key: str | None = None
    arc_key: str | None = None
    topic_key: str | None = None
    quality_score: float | None = None
    judge_score: float | None = None
    human_reviewed: bool = False


def kept_member(row: Any) -> KeptMember:
    """A member row as the members table shows it."""
    return KeptMember(
        conversation_id=row["id"], batch_id=row["batch_job_id"], batch_name=row.get("batch_name"),
        persona_key=row["persona_key"], arc_key=row["arc_key"], topic_key=row["topic_key"],
        quality_score=row["quality_score"], judge_score=judge_score_of(row["judge_scores"]),
        human_reviewed=bool(row["human_reviewed"]) or row.get("review_decision") == APPROVE,
    )


class KeptMembers(Sequence[KeptMember]):
    """The kept members, in order, each a `KeptMember` made when it is read: a version of 10,000
    conversations held 10,000 models (≈ 1 KB each) for a table that shows 500."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> KeptMember: ...
    @overload
    def __getitem__(self, index: slice) -> list[KeptMember]: ...
    def __getitem__(self, index: int | slice) -> KeptMember | list[KeptMember]:
        if isinstance(index, slice):
            return [kept_member(r) for r in self._rows[index]]
        return kept_member(self._rows[index])

    def __iter__(self) -> Iterator[KeptMember]:
        return map(kept_member, self._rows)


class BuildResult(BaseModel):
    """What a build stored and recorded (also on the version row), for the asset's metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    version: int
    prefix: str
    location: str
    outputs: dict[str, OutputFile]
    members: int
    kept: KeptMembers
    min_quality: float | None
    min_judge_score: float | None
    quality_filtered_out: int
    judge_filtered_out: int
    review_rejected_out: int
    filters_run: list[str]
    exact_duplicates: int
    near_duplicates: int
    train_conversations: int
    validation_conversations: int
    conversations: int
    training_pairs: int
    estimated_tokens: int
    avg_quality: float | None
    min_quality_score: float | None
    max_quality_score: float | None
    human_reviewed_count: int
    quality_histogram: list[int]
    scaffolding_distribution: dict[str, dict[str, int]]
    lengths: LengthReport
    max_length: int | None
    leakage: LeakageReport
    leakage_blocking: list[str]
    leakage_warnings: list[str]
    split_groups: SplitReport
    card: str
    #: Wall-clock seconds of each step of the build (load, pass 1, split, pass 2, rest, record).
    phase_seconds: dict[str, float] = Field(default_factory=dict)


def judge_score_of(judge_scores: Any) -> float | None:
    """The Claude judge's overall score stored on a conversation row (`judge_scores`), or None
    when it was never judged or its judge answer was unusable (`{"error": ...}`)."""
    if not isinstance(judge_scores, dict) or "error" in judge_scores:
        return None
    overall = judge_scores.get("overall")
    return float(overall) if isinstance(overall, int | float) else None


def _member(row: dict[str, Any], data: bytes | BaseException) -> EnrichedConversation:
    """A member's enriched conversation from its file's bytes (or the error reading them), or
    MemberFileError naming it (missing file, invalid JSON, or pairs that belong to another
    conversation, e.g. a copied file)."""
    where = f"conversation {row['id']} ({row['enriched_file_path']})"
    if isinstance(data, BaseException):
        raise MemberFileError(f"{where}: enriched.json cannot be read ({data.__class__.__name__}: {data})") from data
    try:
        conv = EnrichedConversation.model_validate_json(data)
    except ValueError as exc:
        first = " ".join(str(exc).split())[:300]
        raise MemberFileError(f"{where}: enriched.json is not a valid v4.0 enriched conversation: {first}") from exc
    foreign = {p.conversation_id for p in conv.training_pairs} - {row["id"]}
    if foreign:
        raise MemberFileError(
            f"{where}: its training pairs carry conversation_id {sorted(foreign)} — the file belongs to another "
            "conversation (copied or overwritten); re-enrich it"
        )
    return conv


#: A dataclass's field values in order, not copied (`dataclasses.astuple` copies deeply).
_RENDERED_VALUES = attrgetter(*(f.name for f in fields(Rendered)))
_MEASURE_VALUES = attrgetter(*(f.name for f in fields(ExampleMeasure)))


class _Spool:
    """Pass 1's work for pass 2, in one local temp file: what each kept member adds to the exports
    (`export.Rendered`: its lines and Parquet rows, before its split is known) and to the leakage
    check (its sketches), pickled. Pass 2 only puts each under its side: it neither reads the
    member again nor parses it, and memory per member is one array entry."""

    def __init__(self) -> None:
        # Unlinked at creation (TemporaryFile): nothing is left behind whatever happens.
        self._file = tempfile.TemporaryFile(prefix="lora-build-")
        self._sizes = array("q")

    def put(self, rendered: Rendered, measured: ExampleMeasure | None) -> None:
        # Their fields as tuples (rebuilt in `read`): pickling the dataclasses themselves took
        # 1.5x the time both ways (class lookups, a state dict per object).
        values = (_RENDERED_VALUES(rendered), None if measured is None else _MEASURE_VALUES(measured))
        blob = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(blob)
        self._sizes.append(len(blob))

    def __len__(self) -> int:
        return len(self._sizes)

    def read(self) -> Iterator[tuple[Rendered, ExampleMeasure | None]]:
        """(rendered, measure) of every member, in the order they were put."""
        self._file.flush()
        self._file.seek(0)
        for size in self._sizes:
            rendered, measured = pickle.loads(self._file.read(size))
            yield Rendered(*rendered), None if measured is None else ExampleMeasure(*measured)

    def close(self) -> None:
        self._file.close()


@dataclass
class _Inputs:
    """What the build reads from the DB before touching any blob."""

    tf: dict[str, Any]
    members: list[dict[str, Any]]
    consultant: ConsultantProfile
    batches: dict[str, dict[str, Any]]


@dataclass
class _Curation:
    """Who is in: the filters' and dedup's decisions, and the kept members' bytes."""

    review_rejected: list[dict[str, Any]] = field(default_factory=list)
    quality_filtered: list[dict[str, Any]] = field(default_factory=list)
    judge_filtered: list[dict[str, Any]] = field(default_factory=list)
    kept: list[Any] = field(default_factory=list)
    dropped: list[tuple[Any, DedupDecision]] = field(default_factory=list)
    dedup: Deduplicator | None = field(default_factory=Deduplicator)
    #: The dedup's figures, once pass 1 is done (its index is then let go).
    dedup_stats: DedupStats = field(default_factory=DedupStats)
    #: By kept member, in order: what it adds to the exports and (None: it exports no example)
    #: to its side of the leakage check.
    spool: _Spool = field(default_factory=_Spool)
    aggregate: AggregateStats | None = None

    def close(self) -> None:
        self.spool.close()
    #: Digests of the kept members' assistant turns (by kept index): the split keeps sharers on
    #: one side.
    turns: SharedTurns = field(default_factory=SharedTurns)


def _turn_keys(targets: TargetTexts) -> frozenset[bytes]:
    """`split.turn_keys` of the member's answers, from the text dedup normalised already (the same
    digests: normalised answers of at least MIN_TURN_WORDS words; tested)."""
    return frozenset(hashlib.blake2b(text.encode(), digest_size=16).digest()
                     for text, words in zip(targets.normalised, targets.words, strict=True)
                     if len(words) >= MIN_TURN_WORDS)


class _Summaries(Sequence[MemberSummary]):
    """The kept members' `MemberSummary`, each made when the split reads it (not a list of them)."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [tfq.summary_of(r) for r in self._rows[index]]
        return tfq.summary_of(self._rows[index])


def _load(engine: Engine, name: str) -> _Inputs:
    """The training file, its members, the consultant profile and the members' batches."""
    with engine.connect() as conn:
        tf = tfq.get_training_file(conn, name)
        if tf is None:
            raise BuildError(f"no training file named {name!r} in the domain DB (create it from the launch dialog "
                             "with run config, or with `lora-assets training-file create`)")
        members = tfq.member_rows(conn, tf["id"])
        consultant = dbq.read_consultant_profile(conn)
        batches = tfq.batch_rows(conn, {m["batch_job_id"] for m in members if m["batch_job_id"]})
    if not members:
        raise BuildError(f"training file {name!r} has no members")
    stale = {m["id"]: m["enrichment_status"] for m in members
             if m["enrichment_status"] != EnrichmentStatus.COMPLETED or not m["enriched_file_path"]}
    if stale:
        raise BuildError(f"training file {name!r}: members no longer enriched: {stale}")
    return _Inputs(tf, members, consultant, batches)


def _filter(members: list[Any], min_quality: float | None, min_judge_score: float | None,
            cur: _Curation) -> list[Any]:
    """Leave out what a human reviewer rejected, then apply the quality filter, then the judge
    filter (a member below both counts as low quality; one never judged counts as below
    `min_judge_score`). Returns the candidates."""
    candidates = []
    for m in members:
        judge = judge_score_of(m["judge_scores"])
        if is_rejected(m):
            cur.review_rejected.append(m)
        elif min_quality is not None and not quality_filter(tfq.summary_of(m), min_quality):  # no threshold: keep
            cur.quality_filtered.append(m)
        elif min_judge_score is not None and (judge is None or judge < min_judge_score):
            cur.judge_filtered.append(m)
        else:
            candidates.append(m)
    return candidates


def _curate(name: str, inputs: _Inputs, store: BlobStore, concurrency: int, measures: BuildMeasures,
            jsonl_out: IO[bytes], json_out: IO[bytes]) -> _Curation:
    """Pass 1: filters and dedup decide who is in, and each kept member's example is measured
    (lengths, diversity, leakage sketches: everything but its split) while the next members are
    read; what the exports need of each kept member is spooled locally for pass 2. The JSONL and
    the JSON document's pairs do not depend on the split: they go to `jsonl_out` and `json_out`
    (the version's uploads, sent part by part meanwhile)."""
    cur = _Curation()
    candidates = _filter(inputs.members, inputs.tf["min_quality"], inputs.tf.get("min_judge_score"), cur)
    dedup = cur.dedup
    assert dedup is not None
    aggregate = AggregateWriter(jsonl_out, json_out)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="blobs") as pool:
        try:
            reads = bounded_map(pool, lambda r: store.get_bytes(r["enriched_file_path"]), candidates,
                                2 * concurrency * READ_CHUNK, chunk=READ_CHUNK)
            number = 0
            for batch in batched(reads, _DEDUP_BATCH):
                # Parsed up to the first unusable member, which is reported after the members
                # before it are done (as one at a time would).
                parsed: list[tuple[Any, EnrichedConversation, TargetTexts]] = []
                unusable: MemberFileError | None = None
                for m, data in batch:
                    try:
                        conv = _member(m, data)
                    except MemberFileError as exc:
                        unusable = exc
                        break
                    parsed.append((m, conv, TargetTexts.of(conv)))
                prepared = dedup.prepare([targets for _, _, targets in parsed])
                for (m, conv, targets), ready in zip(parsed, prepared, strict=True):
                    decision = dedup.check(conv, conversation_id=m["id"], targets=targets, prepared=ready)
                    if decision.keep:
                        # With the DB's review state on its pairs: what the version holds and counts.
                        reviewed = with_review(conv, m)
                        aggregate.add(reviewed, conversation_id=m["id"])
                        rendered, example = render(reviewed, min_trained_quality=inputs.tf["min_quality"],
                                                   conversation_id=m["id"])
                        cur.spool.put(rendered, measures.measure(example, m, targets=targets))
                        cur.turns.add(len(cur.kept), _turn_keys(targets))
                        cur.kept.append(m)
                    else:
                        cur.dropped.append((m, decision))
                    number += 1
                    if number % 256 == 0:
                        release_freed_memory()
                if unusable is not None:
                    raise unusable
                del parsed, prepared
        except (MemberFileError, ValueError) as exc:
            # An unusable member (a missing or invalid file, turns that form no chat: core raises
            # ValueError naming the conversation) is the user's to fix; nothing is written yet.
            cur.close()
            raise BuildError(f"training file {name!r}: {exc}; no version was written") from exc
    # Its index (signatures, digests, ids) is not needed any more: only its figures.
    cur.dedup_stats, cur.dedup = dedup.stats, None
    cur.aggregate = aggregate.stats
    del dedup, aggregate
    release_freed_memory()
    if not cur.kept:
        cur.close()
        raise BuildError(f"training file {name!r}: no conversation left after quality filter "
                         f"({len(cur.quality_filtered)}), judge filter ({len(cur.judge_filtered)}), review "
                         f"rejections ({len(cur.review_rejected)}) and dedup ({len(cur.dropped)})")
    return cur


class _OutputWriters:
    """The version's outputs being written. Each is opened with `open` and handed back with `done`
    as soon as it is whole: its upload is completed in the background (on S3 the last part and the
    CompleteMultipartUpload, which assembles the object: about a second per 200 MB on moto) while
    the build writes the next ones, instead of every file being completed one after the other at
    the end. Leaving the block waits for every completion. On an error, or a completion that
    failed, every file not completed yet is aborted (nothing of it appears; the build's rollback
    removes the ones that did)."""

    def __init__(self, store: BlobStore, key: dict[str, str]) -> None:
        self._store, self._key = store, key
        self._open: dict[str, tuple[ExitStack, IO[bytes]]] = {}
        self._completing: list[Future[Any]] = []
        self._pool = ThreadPoolExecutor(_COMPLETING_THREADS, thread_name_prefix="outputs")
        #: Bytes of each output handed back, as written (no request asks the store afterwards).
        self.sizes: dict[str, int] = {}

    def open(self, fmt: str, deferred_head: bool = False) -> IO[bytes]:
        stack = ExitStack()
        handle = stack.enter_context(self._store.writer(self._key[fmt], deferred_head=deferred_head))
        self._open[fmt] = (stack, handle)
        return handle

    def done(self, *fmts: str, head: bytes | None = None) -> None:
        """These outputs are whole (`head`: the first bytes of one opened with a deferred head):
        complete their uploads in the background."""
        for fmt in fmts:
            stack, handle = self._open.pop(fmt)
            if head is not None:
                handle.head = head  # type: ignore[attr-defined] - a writer with deferred_head
            self.sizes[fmt] = handle.tell()
            self._completing.append(self._pool.submit(stack.close))

    def __enter__(self) -> _OutputWriters:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        failed: BaseException | None = None
        try:
            for future in self._completing:  # every completion ends before a file is aborted
                try:
                    future.result()
                except BaseException as exc:  # noqa: BLE001 - raised below, after the aborts
                    failed = failed or exc
            cause = error or failed
            for stack, _ in self._open.values():
                try:  # every file is tried, whatever one of them raises
                    if cause is None:
                        stack.close()  # not handed back (a bug): completed here, in order
                    else:
                        stack.__exit__(type(cause), cause, cause.__traceback__)  # the writer aborts its upload
                except BaseException as exc:  # noqa: BLE001 - raised below unless an error is on its way
                    failed = failed or exc
            self._open.clear()
        finally:
            self._pool.shutdown()
        if failed is not None and error is None:
            raise failed


#: Output uploads completed at once (each waits for its last parts and the store's answer).
_COMPLETING_THREADS = 4


def _stream_outputs(inputs: _Inputs, writers: _OutputWriters, cur: _Curation, split: dict[str, str],
                    measures: BuildMeasures) -> ExportStats:
    """Pass 2: every export at once, each kept member's rendered lines under its side; its
    measures go to the leakage check of its side. The store uploads each file part by part while
    this goes on, and completes them as soon as they are whole (`_OutputWriters`). Returns the
    export figures."""
    min_quality = inputs.tf["min_quality"]
    handles = {fmt: writers.open(fmt) for fmt in _EXPORTED}
    with ExportWriter(
        messages_train=handles["messages-train"], messages_validation=handles["messages-validation"],
        openai_train=handles["openai-train"], openai_validation=handles["openai-validation"],
        sharegpt_train=handles["sharegpt-train"], sharegpt_validation=handles["sharegpt-validation"],
        parquet=handles["parquet"], min_trained_quality=min_quality,
    ) as exports:
        for m, (rendered, measured) in zip(cur.kept, cur.spool.read(), strict=True):
            side = split[m["id"]]
            exports.write(rendered, side)  # type: ignore[arg-type]
            measures.record(measured, side, m)  # type: ignore[arg-type]
        export_stats = exports.close()  # the Parquet footer is written: every handle holds its whole file
    writers.done(*_EXPORTED)
    return export_stats


def _sources(kept: list[Any], batches: dict[str, dict[str, Any]]) -> list[SourceBatch]:
    """Provenance of every batch that contributed kept members."""
    sources = []
    for b, n in sorted(Counter(m["batch_job_id"] for m in kept).items(), key=lambda kv: str(kv[0])):
        if b not in batches:
            continue
        mine = [m for m in kept if m["batch_job_id"] == b]
        sources.append(SourceBatch(
            batch_id=b, name=batches[b]["name"], model=batches[b]["model"],
            generator="simulator" if any(m["generator"] == "simulator" for m in mine) else "claude",
            created=batches[b]["created_at"], conversations=n,
            cost_usd=round(sum(m["cost_usd"] or 0 for m in mine), 6),
        ))
    return sources


@dataclass
class _Built:
    """The figures of a version while it is being written."""

    version: int
    created: datetime
    stats: AggregateStats
    export: ExportStats
    split: dict[str, str]
    measured: Measured
    split_report: SplitReport
    card: str = ""
    outputs: dict[str, OutputFile] = field(default_factory=dict)
    #: Bytes of each output, as written.
    sizes: dict[str, int] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)


def _write_rest(plan: BuildPlan, inputs: _Inputs, cur: _Curation, store: BlobStore, key: dict[str, str],
                built: _Built) -> None:
    """The Axolotl snippet and the dataset card."""
    axolotl = axolotl_config(
        train_path=OUTPUTS["messages-train"],
        validation_path=OUTPUTS["messages-validation"] if built.export.conversations_validation else None,
        sequence_len=built.measured.lengths.recommended_sequence_len,
        sequence_len_counted_with=built.measured.lengths.method).encode()
    store.put_bytes(key["axolotl"], axolotl)
    built.sizes["axolotl"] = len(axolotl)
    tf = inputs.tf
    built.card = dataset_card(
        name=plan.name, stats=built.stats, sources=_sources(cur.kept, inputs.batches), export=built.export,
        dedup=cur.dedup_stats, min_quality=tf["min_quality"], quality_filtered_out=len(cur.quality_filtered),
        min_judge_score=tf.get("min_judge_score"), judge_filtered_out=len(cur.judge_filtered),
        validation_fraction=plan.validation_fraction, split_seed=plan.split_seed, version=built.version,
        description=tf["description"], created_date=built.created,
        train_file=OUTPUTS["messages-train"], validation_file=OUTPUTS["messages-validation"],
        review_rejected_out=len(cur.review_rejected), lengths=built.measured.lengths, leakage=built.measured.leakage,
        filters_run=filters_run(tf["min_quality"], tf.get("min_judge_score")),
        split_report=built.split_report,
    )
    card = built.card.encode()
    store.put_bytes(key["card"], card)
    built.sizes["card"] = len(card)


def _outputs(store: BlobStore, key: dict[str, str], built: _Built) -> dict[str, OutputFile]:
    """Every output with its size (as written; the store is asked only about one not measured)
    and, for line formats, its line (or row) count."""
    outputs = {fmt: OutputFile(path=key[fmt], bytes=built.sizes[fmt] if fmt in built.sizes else store.size(key[fmt]))
               for fmt in OUTPUTS}
    for fmt, side in _SPLIT_FILES:
        outputs[f"{fmt}-{side}"].lines = built.export.lines(fmt, side)  # type: ignore[arg-type]
    outputs["jsonl"].lines = built.stats.total_training_pairs
    outputs["parquet"].rows = built.export.parquet_rows
    return outputs


def _version_values(plan: BuildPlan, inputs: _Inputs, cur: _Curation, built: _Built, run_id: str) -> dict[str, Any]:
    """The version row: the seed's metadata columns, outputs, curation stats, members, split."""
    qs, stats, out = built.stats.quality_summary, built.stats, built.outputs
    return {
        "version": built.version, "status": "active",
        "json_file_path": out["json"].path, "jsonl_file_path": out["jsonl"].path,
        "conversation_count": stats.conversation_count, "total_training_pairs": stats.total_training_pairs,
        "json_file_size": out["json"].bytes, "jsonl_file_size": out["jsonl"].bytes,
        "avg_quality_score": qs.avg_quality_score, "min_quality_score": qs.min_quality_score,
        "max_quality_score": qs.max_quality_score, "human_reviewed_count": qs.human_reviewed_count,
        "scaffolding_distribution": _distribution(plan.name, built),
        "outputs": {fmt: o.model_dump(exclude_none=True) for fmt, o in out.items()},
        "stats": {
            "members": len(inputs.members),
            "review_rejected_out": len(cur.review_rejected),
            "quality_filtered_out": len(cur.quality_filtered),
            "judge_filtered_out": len(cur.judge_filtered),
            "min_judge_score": inputs.tf.get("min_judge_score"),
            "exact_duplicates": cur.dedup_stats.exact_duplicates,
            "near_duplicates": cur.dedup_stats.near_duplicates,
            "train_conversations": built.export.conversations_train,
            "validation_conversations": built.export.conversations_validation,
            "estimated_tokens": stats.estimated_tokens,
            "dropped": [{"conversation_id": m["id"], "reason": d.reason, "duplicate_of": d.duplicate_of}
                        for m, d in cur.dropped],
            "filtered": [{"conversation_id": m["id"], "quality_score": m["quality_score"]} for m in cur.quality_filtered],
            "judge_filtered": [{"conversation_id": m["id"], "judge_score": judge_score_of(m["judge_scores"])}
                               for m in cur.judge_filtered],
            "review_rejected": [m["id"] for m in cur.review_rejected],
            "filters_run": filters_run(inputs.tf["min_quality"], inputs.tf.get("min_judge_score")),
            "split_groups": built.split_report.model_dump(mode="json"),
            **built.measured.stats(),
        },
        "conversation_ids": [m["id"] for m in cur.kept],
        "split": built.split,
        "built_by_run": run_id,
    }


def _distribution(name: str, built: _Built) -> dict[str, dict[str, int]]:
    return built.stats.dataset_metadata(dataset_name=name, created_date=built.created).scaffolding_distribution.model_dump()


def _rollback(engine: Engine, store: BlobStore, key: dict[str, str], version_row: str) -> None:
    """No partial version: this build owns v<N> (claimed), so removing its keys can never touch
    another build's files."""
    for k in key.values():
        if store.exists(k):
            store.delete(k)
    tfq.release_version(engine, version_row)


def _result(plan: BuildPlan, inputs: _Inputs, cur: _Curation, built: _Built, store: BlobStore) -> BuildResult:
    qs, stats = built.stats.quality_summary, built.stats
    prefix = version_prefix(plan.name, built.version)
    kept = KeptMembers(cur.kept)
    blocking, warnings = built.measured.leakage.problems(built.measured.leakage_thresholds)
    no_validation = built.split_report.line()
    if no_validation:
        warnings = [no_validation, *warnings]
    return BuildResult(
        name=plan.name, version=built.version, prefix=prefix, location=f"{store.location}/{prefix}",
        outputs=built.outputs, members=len(inputs.members), kept=kept,
        min_quality=inputs.tf["min_quality"], min_judge_score=inputs.tf.get("min_judge_score"),
        quality_filtered_out=len(cur.quality_filtered), judge_filtered_out=len(cur.judge_filtered),
        review_rejected_out=len(cur.review_rejected),
        filters_run=filters_run(inputs.tf["min_quality"], inputs.tf.get("min_judge_score")),
        exact_duplicates=cur.dedup_stats.exact_duplicates, near_duplicates=cur.dedup_stats.near_duplicates,
        train_conversations=built.export.conversations_train,
        validation_conversations=built.export.conversations_validation,
        conversations=stats.conversation_count, training_pairs=stats.total_training_pairs,
        estimated_tokens=stats.estimated_tokens, avg_quality=qs.avg_quality_score,
        min_quality_score=qs.min_quality_score, max_quality_score=qs.max_quality_score,
        human_reviewed_count=qs.human_reviewed_count, quality_histogram=list(stats.quality_histogram),
        scaffolding_distribution=_distribution(plan.name, built), card=built.card,
        lengths=built.measured.lengths, max_length=built.measured.max_length, leakage=built.measured.leakage,
        leakage_blocking=blocking, leakage_warnings=warnings, split_groups=built.split_report,
        phase_seconds={k: round(v, 3) for k, v in built.phases.items()},
    )


class _Clock:
    """Wall-clock laps of a build's steps (shown with its metadata)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


def build_training_file(plan: BuildPlan, *, engine: Engine, store: BlobStore, concurrency: int,
                        run_id: str) -> BuildResult:
    """Build, store and record the next version of training file `plan.name` (see the module
    docstring). `concurrency` bounds the blob reads in flight; `run_id` is recorded as the
    version's builder (its checks judge that version). Raises BuildError for what a user can
    fix (unknown file, no members, a tokenizer that cannot be loaded, a member's unusable file,
    nothing left after curation, a concurrent build); nothing partial is left behind in any case."""
    with frozen_heap():  # collections skip the imports' objects (82–190 → 4–9 ms per build)
        return _build(plan, engine=engine, store=store, concurrency=concurrency, run_id=run_id)


def _build(plan: BuildPlan, *, engine: Engine, store: BlobStore, concurrency: int, run_id: str) -> BuildResult:
    clock = _Clock()
    try:
        counter = token_counter(plan.tokenizer)  # before anything is read: a bad path fails fast
    except TokenizerLoadError as exc:
        raise BuildError(f"training file {plan.name!r}: {exc}; no version was written") from exc
    inputs = _load(engine, plan.name)
    measures = BuildMeasures(counter, max_length=plan.max_length, thresholds=plan.leakage_thresholds)
    try:
        # Claimed before pass 1: the JSONL and the JSON document go to the version's keys while pass 1
        # writes them.
        version_row, version = tfq.claim_version(engine, inputs.tf["id"], plan.name)
    except tfq.BuildInProgressError as exc:
        measures.close()
        raise BuildError(str(exc)) from exc
    clock.lap("load")
    prefix = version_prefix(plan.name, version)
    key = {fmt: f"{prefix}/{pattern.format(name=plan.name)}" for fmt, pattern in OUTPUTS.items()}
    cur: _Curation | None = None
    try:
        with _OutputWriters(store, key) as writers:
            # The JSON document's header holds totals known only after pass 1: it is put in front
            # of the pairs pass 1 wrote (on S3, with the first part) when it is known.
            json_out = writers.open("json", deferred_head=True)
            cur = _curate(plan.name, inputs, store, concurrency, measures, writers.open("jsonl"), json_out)
            assert cur.aggregate is not None
            json_out.write(TRAINING_JSON_END)
            created = datetime.now(UTC)
            writers.done("jsonl")
            writers.done("json", head=training_json_head(dataset_name=plan.name, created_date=created,
                                                          consultant=inputs.consultant, stats=cur.aggregate))
            clock.lap("pass_1_read_dedup_render_measure")
            grouped = grouped_split(_Summaries(cur.kept), validation_fraction=plan.validation_fraction,
                                    seed=plan.split_seed, keys=cur.turns)
            split = grouped.sides
            cur.turns = SharedTurns()  # the groups are made
            clock.lap("split")
            export = _stream_outputs(inputs, writers, cur, split, measures)
        clock.lap("pass_2_outputs_uploaded")
        assert cur.aggregate is not None
        built = _Built(version, created, cur.aggregate, export, split, measures.result(), grouped.report,
                       sizes=writers.sizes)
        _write_rest(plan, inputs, cur, store, key, built)
        built.outputs = _outputs(store, key, built)
        clock.lap("leakage_card")
        with engine.begin() as conn:
            tfq.record_version(conn, inputs.tf["id"], version_row, _version_values(plan, inputs, cur, built, run_id))
        clock.lap("record")
        built.phases = clock.laps
    except BaseException as exc:
        _rollback(engine, store, key, version_row)
        # Unusable member data (core raises ValueError naming the conversation) is the user's
        # to fix; anything else is a bug or an outage and propagates as it is.
        if isinstance(exc, MemberFileError | ValueError) and not isinstance(exc, BuildError):
            raise BuildError(f"training file {plan.name!r}: {exc}; no version was written") from exc
        raise
    finally:
        if cur is not None:
            cur.close()
        measures.close()
    return _result(plan, inputs, cur, built, store)
