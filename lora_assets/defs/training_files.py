"""training_files: named, versioned aggregates with fine-tuning exports, and their checks.

The build itself lives in `lora_assets.training_build` (plain Python); this module reads the
partition, the launch config and the resources, applies the launch's membership request, calls
the build and shows what it made as metadata a person acts on (tables, paths, links)."""

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    asset_check,
)
from pydantic import Field, ValidationError

from lora_assets.core.aggregate import QUALITY_BUCKET_WIDTH, TrainingFileNameError, scan_training_json
from lora_assets.core.audit import JsonlAudit, audit_jsonl, member_problems, metadata_problems, parquet_split_sides
from lora_assets.core.leakage import LeakageThresholds
from lora_assets.defs.partitions import training_files_partitions
from lora_assets.defs.report import check_result, table
from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.defs.samples import SAMPLES, card_markdown, sample_markdown
from lora_assets.store.batches import batch_key
from lora_assets.store import training_files as tfq
from lora_assets.store.blobs import BlobStore, LocalBlobStore
from lora_assets.training_build import (  # noqa: F401 - OUTPUTS / version_prefix: imported from here by callers
    OUTPUTS,
    BuildError,
    BuildPlan,
    BuildResult,
    KeptMember,
    build_training_file,
    version_prefix,
)
from lora_assets.training_stats import NotRecordedError, cell_rows, leakage_problems, length_problems, recorded
from lora_assets.training_stats import split_problems

#: Rows of the `members` table (a UI table of tens of thousands of rows helps nobody).
MEMBERS_SHOWN = 500
#: Presigned S3 download links in the metadata stay valid this long.
DOWNLOAD_LINK_TTL = timedelta(days=1)


class LeakageThresholdsConfig(Config):
    """When train/validation leakage and diversity figures fail the `training_file_leakage` check
    (`lora_assets.core.leakage.LeakageThresholds`; null switches a rule off)."""

    max_exact_duplicate_turns: int | None = Field(
        default=0, description="Blocking above this many validation assistant turns found verbatim in train.")
    block_verbatim_sentence_rate: float | None = Field(
        default=None, description="Blocking above this share of validation sentences found verbatim in train.")
    warn_verbatim_sentence_rate: float | None = Field(default=0.10, description="Warn above this verbatim share.")
    warn_near_duplicate_turn_rate: float | None = Field(
        default=0.05, description="Warn above this share of near-duplicate validation turns.")
    min_template_rate: float | None = Field(default=0.5, description="Warn below this template rate.")
    max_top_template_share: float | None = Field(
        default=0.02, description="Warn when one template is more than this share of sentences…")
    min_top_template_count: int = Field(default=5, description="…and occurs at least this often.")
    min_cell_template_rate: float | None = Field(default=0.5, description="Warn for cells below this template rate.")
    min_cell_sentences: int = Field(default=20, description="Cells with fewer sentences are not judged.")
    min_distinct_2: float | None = Field(default=None, description="Warn below this distinct-2 (off by default).")


class TrainingFileLaunch(Config):
    """Run config of a `training_files` launch. With `batches` or `conversations` the training
    file is created (if new) or those conversations are added (seed rules: a duplicate, unknown
    or not enriched conversation is refused with its reason and nothing is written); without
    them the current membership is rebuilt. Thresholds given here are stored on the file."""

    description: str | None = Field(default=None, description="Description of the training file (shown in its card).")
    batches: list[str] = Field(default=[], description="Batch job ids: add every conversation of each.")
    conversations: list[str] = Field(default=[], description="Conversation ids to add (instead of batches).")
    min_quality: float | None = Field(default=None, description="Leave out conversations with quality below this (0-5).")
    min_judge_score: float | None = Field(
        default=None, description="Leave out conversations whose Claude-judge score is below this (0-5), or never judged.")
    skip_ineligible: bool = Field(default=False, description="Add only enriched conversations, listing the others.")
    tokenizer: str | None = Field(
        default=None, description="Local tokenizer.json or HF tokenizer directory to count tokens with (default: "
        "the labelled chars/4 estimate).")
    max_length: int | None = Field(
        default=None, description="Training max_length: the lengths check warns when examples exceed it (default: "
        "the recommended one).")
    leakage_thresholds: LeakageThresholdsConfig = Field(
        default_factory=LeakageThresholdsConfig, description="Thresholds of the training_file_leakage check.")

    def plan(self, name: str) -> BuildPlan:
        """The build plan of this launch for training file `name` (ValidationError naming a bad field)."""
        return BuildPlan(name=name, tokenizer=self.tokenizer, max_length=self.max_length,
                         leakage_thresholds=LeakageThresholds(**self.leakage_thresholds.model_dump()))


# --- metadata tables ----------------------------------------------------------------------------


def _table(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> MetadataValue:
    """A UI table: `columns` as (name, type); each row a dict of plain values by column name."""
    return MetadataValue.table(
        records=[TableRecord(data={c: r.get(c) for c, _ in columns}) for r in rows],
        schema=TableSchema(columns=[TableColumn(name=c, type=kind) for c, kind in columns]),
    )


def _download(store: BlobStore, key: str, files_url: str = "") -> tuple[str, MetadataValue]:
    """Where to get a blob: for a local store, a link into `lora-assets serve-files` when
    LORA_FILES_URL is set (a browser will not open a file:// path from a web page), else its
    path; for S3, a presigned URL."""
    if isinstance(store, LocalBlobStore):
        if files_url:
            url = f"{files_url.rstrip('/')}/{quote(key)}"
            return url, MetadataValue.url(url)
        path = store.url(key)  # a local store's "url" is the file's absolute path
        return path, MetadataValue.path(path)
    url = store.url(key, expires_in=int(DOWNLOAD_LINK_TTL.total_seconds()))
    return url, MetadataValue.url(url)


def _outputs_metadata(result: BuildResult, store: BlobStore, files_url: str = "") -> dict[str, Any]:
    """The `outputs` table (one row per format) and an `output/<format>` path or link each."""
    rows, entries = [], {}
    for fmt, out in result.outputs.items():
        where, value = _download(store, out.path, files_url)
        entries[f"output/{fmt}"] = value
        rows.append({"format": fmt, "file": out.path.rsplit("/", 1)[-1], "bytes": out.bytes,
                     "lines_or_rows": out.lines if out.lines is not None else out.rows, "location": where})
    entries["outputs"] = _table([("format", "string"), ("file", "string"), ("bytes", "int"),
                                 ("lines_or_rows", "int"), ("location", "string")], rows)
    if not isinstance(store, LocalBlobStore):
        expires = datetime.now(UTC) + DOWNLOAD_LINK_TTL
        entries["download_links_expire"] = MetadataValue.text(
            f"{expires.isoformat(timespec='seconds')} (presigned S3 links, valid {DOWNLOAD_LINK_TTL}; "
            "rematerialise or use `lora-assets training-file download` after that)")
    return entries


def _members_table(kept: list[KeptMember], batch_keys: dict[str, str] | None = None) -> MetadataValue:
    """The kept members (first MEMBERS_SHOWN). `batch` is the batch's key (what run config and the
    CLI take), not its display name; the short key columns come first, the long id last, so a
    narrow page still shows what a person filters by."""
    keys = batch_keys or {}
    rows = [{"batch": keys.get(m.batch_id or "", m.batch_id), "persona": m.persona_key, "arc": m.arc_key,
             "topic": m.topic_key, "quality": m.quality_score, "judge_score": m.judge_score,
             "human_reviewed": m.human_reviewed, "conversation_id": m.conversation_id} for m in kept[:MEMBERS_SHOWN]]
    return _table([("batch", "string"), ("persona", "string"), ("arc", "string"), ("topic", "string"),
                   ("quality", "float"), ("judge_score", "float"), ("human_reviewed", "bool"),
                   ("conversation_id", "string")], rows)


def _histogram_table(histogram: list[int]) -> MetadataValue:
    """Conversations per quality bucket (empty buckets left out)."""
    rows = [{"quality": f"{i * QUALITY_BUCKET_WIDTH:.1f}–{(i + 1) * QUALITY_BUCKET_WIDTH:.1f}", "conversations": n}
            for i, n in enumerate(histogram) if n]
    return _table([("quality", "string"), ("conversations", "int")], rows)


def _distribution_table(dist: dict[str, dict[str, int]]) -> MetadataValue:
    """Conversations per scaffolding key (personas, emotional arcs, training topics)."""
    rows = [{"scaffolding": kind, "key": key, "conversations": n}
            for kind, counts in dist.items() for key, n in sorted(counts.items())]
    return _table([("scaffolding", "string"), ("key", "string"), ("conversations", "int")], rows)


def _coverage(rows: Sequence[Any]) -> tuple[list[str], list[str], Counter, dict[tuple[str, str], set[str]]]:
    """Persona × arc cells of conversations (and their distinct topics); `rows` are dicts or
    KeptMember models with persona/arc/topic keys (None: a legacy conversation)."""
    cells: Counter[tuple[str, str]] = Counter()
    topics: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        get = r.get if isinstance(r, dict) else lambda k, r=r: getattr(r, k)
        cell = (get("persona_key") or "(legacy)", get("arc_key") or "(legacy)")
        cells[cell] += 1
        topics.setdefault(cell, set()).add(get("topic_key") or "(legacy)")
    return sorted({p for p, _ in cells}), sorted({a for _, a in cells}), cells, topics


def _coverage_table(kept: list[KeptMember]) -> MetadataValue:
    """Every persona × arc cell (empty ones too: where the file is thin), with its conversations
    and distinct topics."""
    personas, arcs, cells, topics = _coverage(kept)
    rows = [{"persona": p, "arc": a, "conversations": cells[(p, a)], "distinct_topics": len(topics.get((p, a), ()))}
            for p in personas for a in arcs]
    return _table([("persona", "string"), ("arc", "string"), ("conversations", "int"), ("distinct_topics", "int")], rows)


def coverage_matrix_md(rows: list[dict[str, Any]]) -> str:
    """Persona × emotional arc matrix of conversations (cells summed over topics) as markdown,
    plus the number of distinct topics per cell (kept for text reports; the asset shows a table)."""
    personas, arcs, cells, topics = _coverage(rows)
    if not personas:
        return "No conversations."
    lines = ["| persona \\ arc | " + " | ".join(arcs) + " |", "|" + "---|" * (len(arcs) + 1)]
    for p in personas:
        body = [f"{cells[(p, a)]} ({len(topics.get((p, a), ()))}t)" if cells[(p, a)] else "·" for a in arcs]
        lines.append(f"| {p} | " + " | ".join(body) + " |")
    return "\n".join(lines) + "\n\nCells: conversations (distinct topics)."


def _lengths_metadata(result: BuildResult) -> dict[str, Any]:
    """Token-length percentiles (and how they were counted), the recommended lengths, the cut."""
    lengths, cut = result.lengths, result.lengths.truncation
    rows = [(label, p.count, p.p50, p.p95, p.p99, p.max, p.mean) for label, p in (
        ("examples", lengths.examples), ("turns", lengths.turns), ("assistant_turns", lengths.assistant_turns))]
    return {
        "token_count_method": MetadataValue.text(lengths.method),
        "tokens_p50": lengths.examples.p50, "tokens_p95": lengths.examples.p95, "tokens_max": lengths.examples.max,
        "token_lengths": table({"unit": str, "count": int, "p50": int, "p95": int, "p99": int, "max": int,
                                "mean": float}, rows),
        "recommended_sequence_len": lengths.recommended_sequence_len,
        "recommended_max_length": lengths.recommended_max_length,
        "max_length": MetadataValue.text("recommended" if result.max_length is None else str(result.max_length)),
        **({"examples_over_max_length": cut.examples_over, "assistant_tokens_cut": cut.assistant_tokens_cut}
           if cut is not None else {}),
    }


def _leakage_metadata(result: BuildResult) -> dict[str, Any]:
    """Train/validation overlap and diversity figures, per cell as a table, and what they fail."""
    o, d = result.leakage.overlap, result.leakage.diversity
    columns = {"persona": str, "arc": str, "topic": str, "conversations": int, "distinct_1": float,
               "distinct_2": float, "template_rate": float, "sentences": int}
    return {
        "validation_sentences_verbatim_in_train": o.verbatim_sentences,
        "validation_verbatim_sentence_rate": round(o.verbatim_rate, 4),
        "exact_duplicate_turns_across_split": o.exact_duplicate_turns,
        "near_duplicate_turns_across_split": o.near_duplicate_turns,
        "distinct_1": d.distinct_1, "distinct_2": d.distinct_2, "template_rate": round(d.template_rate, 4),
        "top_template": MetadataValue.text(f"{d.top_template} ({d.top_template_count}×)" if d.top_template else "none"),
        "diversity_by_cell": table(columns, [[r[c] for c in columns] for r in cell_rows(result.leakage)], limit=500),
        "leakage_problems": MetadataValue.md("\n".join(
            [f"- **blocking:** {p}" for p in result.leakage_blocking] + [f"- warning: {p}" for p in result.leakage_warnings])
            or "None."),
    }


def _metadata(result: BuildResult, store: BlobStore, *, files_url: str = "", batch_keys: dict[str, str] | None = None,
              samples: str = "") -> dict[str, Any]:
    """Materialisation metadata of a build: figures, tables, paths or links, sample
    conversations, the card (front matter as a table, text escaped)."""
    return {
        "version": result.version, "conversations": result.conversations, "training_pairs": result.training_pairs,
        "members": result.members, "review_rejected_out": result.review_rejected_out,
        "quality_filtered_out": result.quality_filtered_out,
        "judge_filtered_out": result.judge_filtered_out,
        "filters_run": MetadataValue.text(", ".join(result.filters_run)),
        "quality_threshold": MetadataValue.text("none" if result.min_quality is None else f"{result.min_quality:g}"),
        "judge_score_threshold": MetadataValue.text(
            "none" if result.min_judge_score is None else f"{result.min_judge_score:g} (never judged: left out)"),
        "exact_duplicates_removed": result.exact_duplicates, "near_duplicates_removed": result.near_duplicates,
        "train_conversations": result.train_conversations, "validation_conversations": result.validation_conversations,
        "estimated_tokens": result.estimated_tokens, "avg_quality": result.avg_quality,
        "min_quality": result.min_quality_score, "max_quality": result.max_quality_score,
        "human_reviewed_count": MetadataValue.int(result.human_reviewed_count),
        "location": result.location,
        "members_table": _members_table(result.kept, batch_keys),
        "members_not_listed": MetadataValue.int(max(0, len(result.kept) - MEMBERS_SHOWN)),
        "quality_histogram": _histogram_table(result.quality_histogram),
        "scaffolding_distribution": _distribution_table(result.scaffolding_distribution),
        "coverage_matrix": _coverage_table(result.kept),
        **_lengths_metadata(result),
        **_leakage_metadata(result),
        **_outputs_metadata(result, store, files_url),
        **({"sample_conversations": MetadataValue.md(samples)} if samples else {}),
        "build_seconds": MetadataValue.json(result.phase_seconds),
        "dataset_card": MetadataValue.md(card_markdown(result.card)),
    }


# --- the asset ------------------------------------------------------------------------------------


def _apply_launch(context: AssetExecutionContext, config: TrainingFileLaunch, db: DomainDB) -> dict[str, Any]:
    """Create the training file / add members / update its settings as the run config asks;
    every refusal is a run failure naming each id and its reason. Returns metadata to show."""
    name = context.partition_key
    request = tfq.LaunchRequest(**config.model_dump(include=set(tfq.LaunchRequest.model_fields)))
    try:
        outcome = tfq.apply_launch_request(db.engine(), name, request, by=f"dagster-run-{context.run.run_id[:8]}")
    except (tfq.TrainingFileError, TrainingFileNameError) as exc:
        raise Failure(description=str(exc)) from None
    for cid, reason in outcome.skipped.items():
        context.log.warning(f"training file {name!r}: skipped {cid}: {reason}")
    if not (request.selects or request.changes_settings):
        return {}
    return {
        "created": outcome.created, "members_added": outcome.added,
        "skipped_ineligible": _table([("conversation_id", "string"), ("reason", "string")],
                                     [{"conversation_id": c, "reason": r} for c, r in outcome.skipped.items()]),
    }


@asset(
    partitions_def=training_files_partitions,
    deps=[AssetKey("enriched_conversations")],
    group_name="training_files",
    kinds={"json", "parquet"},
)
def training_files(context: AssetExecutionContext, config: TrainingFileLaunch, db: DomainDB,
                   blobs: BlobStoreResource) -> MaterializeResult:
    """Build the next version (v1, v2, …) of the training file named by the partition: quality
    and Claude-judge filters → exact/near-duplicate removal → seeded stratified train/validation
    split by conversation → the v4.0 aggregated JSON + JSONL, HF/TRL messages, OpenAI chat,
    ShareGPT, Parquet, an Axolotl config snippet and a dataset card (see
    `lora_assets.training_build`), measuring the exported examples' token lengths and
    train/validation leakage on the way. With run config (`batches` or `conversations`) the file is
    created or extended first; without, its current membership is rebuilt. Either every output
    of the version is stored and recorded, or none is."""
    try:
        plan = config.plan(context.partition_key)
    except ValidationError as exc:
        raise Failure(description=f"training file {context.partition_key!r}: invalid run config: {exc}") from None
    launched = _apply_launch(context, config, db)
    store = blobs.store()
    try:
        result = build_training_file(plan, engine=db.engine(), store=store, concurrency=blobs.concurrency,
                                     run_id=context.run.run_id)
    except BuildError as exc:
        raise Failure(description=str(exc)) from exc
    engine = db.engine()
    batch_ids = sorted({m.batch_id for m in result.kept if m.batch_id})
    with engine.connect() as conn:
        batch_keys = {i: batch_key(conn, i) for i in batch_ids[:200]}
    samples = sample_markdown(engine, store, conversation_ids=[m.conversation_id for m in result.kept[:SAMPLES]])
    return MaterializeResult(metadata={**launched, **_metadata(result, store, files_url=blobs.files_url,
                                                               batch_keys=batch_keys, samples=samples)})


# --- checks ---------------------------------------------------------------------------------


def _latest(context: Any, db: DomainDB) -> tuple[dict[str, Any], dict[str, Any]]:
    """The version this run built (two builds at once: each run's checks judge its own), or,
    for a check run on its own, the latest."""
    name = context.partition_key
    with db.engine().connect() as conn:
        tf = tfq.get_training_file(conn, name)
        version = tfq.get_version(conn, name, built_by_run=context.run.run_id) or tfq.get_version(conn, name)
    if tf is None or version is None:
        raise Failure(f"training file {name!r} has no built version")
    return tf, version


def _lines(store: BlobStore, key: str) -> Iterator[bytes]:
    """Lines of a JSONL blob, streamed (split on \\n only: U+2028 may sit inside JSON strings)."""
    with store.open_read(key) as fh:
        buffer = b""
        while chunk := fh.read(1 << 20):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            yield from (line for line in lines if line.strip())
        if buffer.strip():
            yield buffer


#: (run id, JSONL key) → its audit. Three checks of a run read the same JSONL: one pass serves them
#: (a 10,000-conversation file is ≈ 200 MB). Per run, so a file changed since is read again.
_AUDITS: dict[tuple[str, str], JsonlAudit] = {}


def _audit(context: Any, store: BlobStore, key: str) -> JsonlAudit:
    """`audit_jsonl` of the JSONL at `key`, once per run."""
    cached = (context.run.run_id, key)
    if cached not in _AUDITS:
        _AUDITS.clear()  # a run checks one version: keep one
        _AUDITS[cached] = audit_jsonl(_lines(store, key))
    return _AUDITS[cached]


def _summary(problems: list[str], ok: str) -> str:
    """A check's description: `ok`, or how many problems and the first."""
    return ok if not problems else f"{len(problems)} problem(s): {problems[0]}"


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=True,
             description="The JSONL is schema-valid (every line a v4.0 training pair), the JSON's header is "
             "valid v4.0 dataset metadata, and the JSON holds exactly the JSONL's pairs.")
def training_file_schema_valid(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Schema validity of the latest version, streamed line by line."""
    from lora_assets.schemas.training import AggregateDatasetMetadata

    _, v = _latest(context, db)
    store = blobs.store()
    audit = _audit(context, store, v["jsonl_file_path"])
    problems = [f"{v['jsonl_file_path']} {p}" for p in audit.invalid_lines]
    n = audit.pairs + len(audit.invalid_lines)
    # The JSON document's layout is core.aggregate's: it reads back the header and the pairs.
    scan = scan_training_json(_lines(store, v["json_file_path"]))
    try:
        if scan.header is None:
            raise ValueError(scan.header_error or "no header")
        AggregateDatasetMetadata.model_validate(scan.header["dataset_metadata"])
    except (ValueError, KeyError) as exc:
        problems.append(f"{v['json_file_path']}: dataset_metadata invalid: {str(exc).splitlines()[0]}")
    json_pairs = scan.pairs
    if json_pairs != n:
        problems.append(f"{v['json_file_path']} holds {json_pairs} pairs, the JSONL {n}")
    return check_result(problems, _summary(problems, f"v{v['version']}: {n} valid training pairs"),
                        {"version": v["version"], "pairs": n})


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=True,
             description="JSONL line count = total_training_pairs; DB metadata (counts, sizes, quality "
             "min/avg/max, human_reviewed_count, scaffolding distribution) = the file contents.")
def training_file_metadata_matches(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Recompute every metadata figure from the JSONL (core.audit) and compare with the DB row."""
    _, v = _latest(context, db)
    store = blobs.store()
    audit = _audit(context, store, v["jsonl_file_path"])
    problems = metadata_problems(audit, v)
    for label, key in (("jsonl_file_size", "jsonl_file_path"), ("json_file_size", "json_file_path")):
        if v[label] != store.size(v[key]):
            problems.append(f"{label}: DB says {v[label]!r}, file has {store.size(v[key])!r}")
    return check_result(problems, _summary(problems, f"v{v['version']}: DB metadata matches {audit.pairs} pairs in "
                                           f"{len(audit.conversations)} conversations"),
                        {"version": v["version"], "pairs": audit.pairs, "conversations": len(audit.conversations)})


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=True,
             description="No conversation twice (its pairs form one contiguous block), and only "
             "conversations that are enriched in the DB.")
def training_file_members_valid(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Duplicate and eligibility rules of the seed, on the built file."""
    _, v = _latest(context, db)
    audit = _audit(context, blobs.store(), v["jsonl_file_path"])
    with db.engine().connect() as conn:
        statuses = tfq.enrichment_statuses(conn, audit.conversations)
    problems = member_problems(audit, v["conversation_ids"] or [], statuses)
    return check_result(problems, _summary(problems, f"v{v['version']}: {len(audit.conversations)} distinct, enriched "
                                           "conversations"), {"conversations": len(audit.conversations)})


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=True,
             description="Export line counts agree (messages / OpenAI / ShareGPT per split, Parquet rows = "
             "training pairs) and train / validation share no conversation.")
def training_file_exports_consistent(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Exports are complete and the split is disjoint."""
    _, v = _latest(context, db)
    store = blobs.store()
    outputs = v["outputs"] or {}
    problems = []
    counts = {fmt: sum(1 for _ in _lines(store, outputs[fmt]["path"])) for fmt in outputs if fmt.split("-")[0] in ("messages", "openai", "sharegpt")}
    for fmt, n in counts.items():
        if n != outputs[fmt].get("lines"):
            problems.append(f"{fmt}: {n} lines, recorded {outputs[fmt].get('lines')}")
    for split_name in ("train", "validation"):
        if counts.get(f"messages-{split_name}") != counts.get(f"sharegpt-{split_name}"):
            problems.append(f"{split_name}: messages has {counts.get(f'messages-{split_name}')} examples, ShareGPT {counts.get(f'sharegpt-{split_name}')}")
    # Parquet needs a seekable file; an S3 body is a stream, so spool it to a temp file first.
    with store.open_read(outputs["parquet"]["path"]) as fh, tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(fh, spool)
        spool.seek(0)
        rows, sides = parquet_split_sides(spool)
    if rows != v["total_training_pairs"]:
        problems.append(f"parquet: {rows} rows, {v['total_training_pairs']} training pairs")
    both = [c for c, s in sides.items() if len(s) > 1]
    problems += [f"conversation {c} is in both train and validation" for c in both]
    recorded = v.get("split") or {}
    if recorded and any(recorded.get(c) not in s for c, s in sides.items()):
        problems.append("parquet split column differs from the recorded split")
    return check_result(problems, _summary(problems, f"v{v['version']}: exports consistent, train/validation disjoint"),
                        {"train_examples": counts.get("messages-train", 0), "validation_examples": counts.get("messages-validation", 0)})


def _recorded_stats(context: Any, db: DomainDB) -> tuple[dict[str, Any], Any]:
    """The version this check judges and what its build measured, or (version, a WARN result)
    for a version built before builds recorded lengths and leakage."""
    _, v = _latest(context, db)
    try:
        return v, recorded(v["stats"])
    except NotRecordedError as exc:
        return v, check_result([f"v{v['version']}: {exc}"], f"v{v['version']}: {exc}", severity=AssetCheckSeverity.WARN)


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=False,
             description="Warns when chat examples exceed the training max_length (the configured one, else the "
             "recommended one, which cuts nothing): how many examples and how many assistant tokens would be cut.")
def training_file_lengths(context, db: DomainDB) -> AssetCheckResult:
    """Token lengths the build recorded on the version row, judged at its effective max_length."""
    v, measured = _recorded_stats(context, db)
    if isinstance(measured, AssetCheckResult):
        return measured
    lengths, problems = measured.lengths, length_problems(measured)
    ok = (f"v{v['version']}: no example exceeds max_length {measured.effective_max_length} "
          f"(p50 {lengths.examples.p50}, p95 {lengths.examples.p95}, max {lengths.examples.max}; {lengths.method})")
    cut = lengths.truncation
    return check_result(problems, _summary(problems, ok), {
        "version": v["version"], "method": MetadataValue.text(lengths.method),
        "max_length": measured.effective_max_length, "examples_over": cut.examples_over if cut else 0,
        "assistant_tokens_cut": cut.assistant_tokens_cut if cut else 0,
        "recommended_max_length": lengths.recommended_max_length,
        "recommended_sequence_len": lengths.recommended_sequence_len,
    }, severity=AssetCheckSeverity.WARN)


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=True,
             description="Train/validation leakage and diversity: fails (blocking) when validation assistant turns "
             "occur verbatim in train; warns on verbatim sentences, near-duplicate turns and templated answers "
             "above the launch's leakage_thresholds.")
def training_file_leakage(context, db: DomainDB) -> AssetCheckResult:
    """The leakage report the build recorded on the version row, under the thresholds it recorded."""
    v, measured = _recorded_stats(context, db)
    if isinstance(measured, AssetCheckResult):
        return measured
    blocking, warnings = leakage_problems(measured)
    warnings = split_problems(v["stats"]) + warnings  # grouping left no validation set: say so
    o, d = measured.leakage.overlap, measured.leakage.diversity
    ok = (f"v{v['version']}: no validation assistant turn occurs in train ({o.verbatim_sentences} of "
          f"{o.validation_sentences} validation sentences verbatim); template rate {d.template_rate:.2f}")
    problems = [f"blocking: {p}" for p in blocking] + [f"warning: {p}" for p in warnings]
    return check_result(problems, _summary(problems, ok), {
        "version": v["version"], "blocking": len(blocking), "warnings": len(warnings),
        "exact_duplicate_turns": o.exact_duplicate_turns, "near_duplicate_turns": o.near_duplicate_turns,
        "verbatim_sentence_rate": round(o.verbatim_rate, 4), "template_rate": round(d.template_rate, 4),
        "distinct_2": d.distinct_2,
    }, severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN)
