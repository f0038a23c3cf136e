"""training_files: named, versioned aggregates with fine-tuning exports, and their checks."""

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from lora_assets.core.aggregate import AggregateWriter, write_training_json
from lora_assets.core.audit import audit_jsonl, member_problems, metadata_problems
from lora_assets.core.card import SourceBatch, dataset_card
from lora_assets.core.dedup import Deduplicator, quality_filter
from lora_assets.core.export import ExportWriter, axolotl_config
from lora_assets.core.split import train_validation_split
from lora_assets.defs.partitions import training_files_partitions
from lora_assets.defs.report import md_table
from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.schemas import EnrichedConversation, EnrichmentStatus
from lora_assets.store import db as dbq
from lora_assets.store import queries as q
from lora_assets.store import training_files as tfq
from lora_assets.store.blobs import BlobStore, bounded_map, release_freed_memory

VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0

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


def version_prefix(name: str, version: int) -> str:
    return f"training-files/{name}/v{version}"


class MemberFileError(Exception):
    """A member's enriched.json cannot be used; names the conversation, the file and why."""


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


class _LocalCopies:
    """The kept members' enriched.json bytes in one local temp file, so the second pass reads
    each member from local disk instead of from the blob store again (one GET per member)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._where: dict[str, tuple[int, int]] = {}
        self._end = 0

    def put(self, conversation_id: str, data: bytes) -> None:
        self._where[conversation_id] = (self._end, len(data))
        self._file.write(data)  # appends: every put happens before the first get
        self._end += len(data)

    def get(self, conversation_id: str) -> bytes:
        offset, size = self._where[conversation_id]
        self._file.seek(offset)
        return self._file.read(size)


def _histogram_md(histogram: list[int] | dict[Any, int]) -> str:
    counts = list(histogram.values()) if isinstance(histogram, dict) else list(histogram)
    peak = max(counts) if counts and max(counts) else 1
    rows = [(f"{i * 0.5:.1f}–{i * 0.5 + 0.5:.1f}", n, "█" * round(20 * n / peak)) for i, n in enumerate(counts)]
    return md_table(["quality", "conversations", ""], [r for r in rows if r[1]], empty="No scores.")


def coverage_matrix_md(rows: list[dict[str, Any]]) -> str:
    """Persona × emotional arc matrix of conversations (cells summed over topics), plus the
    number of distinct topics per cell: where the file is thin at a glance."""
    cells: Counter[tuple[str, str]] = Counter()
    topics: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        cell = (r["persona_key"] or "(legacy)", r["arc_key"] or "(legacy)")
        cells[cell] += 1
        topics.setdefault(cell, set()).add(r["topic_key"] or "(legacy)")
    personas = sorted({p for p, _ in cells})
    arcs = sorted({a for _, a in cells})
    body = [[p] + [f"{cells[(p, a)]} ({len(topics.get((p, a), ()))}t)" if cells[(p, a)] else "·" for a in arcs]
            for p in personas]
    return md_table(["persona \\ arc"] + arcs, body, empty="No conversations.") + "\n\nCells: conversations (distinct topics)."


def _distribution_md(dist: dict[str, dict[str, int]]) -> str:
    rows = [(kind, key, n) for kind, counts in dist.items() for key, n in sorted(counts.items())]
    return md_table(["scaffolding", "key", "conversations"], rows)


@asset(
    partitions_def=training_files_partitions,
    deps=[AssetKey("enriched_conversations")],
    group_name="training_files",
    kinds={"json", "parquet"},
)
def training_files(context: AssetExecutionContext, db: DomainDB, blobs: BlobStoreResource) -> MaterializeResult:
    """Build the next version (v1, v2, …) of the training file named by the partition: quality
    filter → exact/near-duplicate removal → seeded stratified train/validation split by
    conversation → the v4.0 aggregated JSON + JSONL, HF/TRL messages, OpenAI chat, ShareGPT,
    Parquet, an Axolotl config snippet and a dataset card. Streams conversation by conversation;
    either every output of the version is stored and recorded, or none is."""
    name = context.partition_key
    engine = db.engine()
    store = blobs.store()
    with engine.connect() as conn:
        tf = tfq.get_training_file(conn, name)
        if tf is None:
            raise Failure(f"no training file named {name!r} in the domain DB (create it with `lora-assets training-file create`)")
        members = tfq.member_rows(conn, tf["id"])
        consultant = dbq.read_consultant_profile(conn)
        batches = {b["id"]: b for b in q.list_batches(conn, with_snapshot=False)}
    if not members:
        raise Failure(f"training file {name!r} has no members")
    stale = {m["id"]: m["enrichment_status"] for m in members if m["enrichment_status"] != EnrichmentStatus.COMPLETED or not m["enriched_file_path"]}
    if stale:
        raise Failure(f"training file {name!r}: members no longer enriched: {stale}")

    # Pass 1 (metadata + target texts only): quality filter and dedup decide who is in.
    min_quality = tf["min_quality"]
    filtered = [m for m in members if not quality_filter(tfq.summary_of(m), min_quality)]
    candidates = [m for m in members if quality_filter(tfq.summary_of(m), min_quality)]
    dedup = Deduplicator()
    kept, dropped = [], []
    # Unlinked at creation (TemporaryFile): nothing is left behind whatever happens below.
    copies = _LocalCopies()
    with blobs.pool() as pool:
        try:
            reads = bounded_map(pool, lambda r: store.get_bytes(r["enriched_file_path"]), candidates,
                                2 * blobs.concurrency)
            for number, (m, data) in enumerate(reads, start=1):
                decision = dedup.check(_member(m, data), conversation_id=m["id"])
                (kept if decision.keep else dropped).append((m, decision))
                if decision.keep:
                    copies.put(m["id"], data)  # type: ignore[arg-type] - _member raised on an exception
                if number % 256 == 0:
                    release_freed_memory()
        except MemberFileError as exc:
            raise Failure(f"training file {name!r}: {exc}; no version was written") from exc
    kept_rows = [m for m, _ in kept]
    if not kept_rows:
        raise Failure(f"training file {name!r}: no conversation left after quality filter ({len(filtered)}) and dedup ({len(dropped)})")
    split = train_validation_split(
        [tfq.summary_of(m) for m in kept_rows], validation_fraction=VALIDATION_FRACTION, seed=SPLIT_SEED
    )

    try:
        version_row, version = tfq.claim_version(engine, tf["id"], name)
    except tfq.BuildInProgressError as exc:
        raise Failure(str(exc)) from exc
    prefix = version_prefix(name, version)
    key = {fmt: f"{prefix}/{pattern.format(name=name)}" for fmt, pattern in OUTPUTS.items()}
    created = datetime.now(UTC)
    written: list[str] = []
    try:
        # Pass 2: every format at once, streamed.
        with ExitStack() as stack:
            handles = {fmt: stack.enter_context(store.writer(key[fmt])) for fmt in OUTPUTS if fmt not in ("json", "axolotl", "card")}
            aggregate = AggregateWriter(handles["jsonl"])
            # Entered after the handles, so it is closed (Parquet footer) before they are.
            exports = stack.enter_context(ExportWriter(
                messages_train=handles["messages-train"], messages_validation=handles["messages-validation"],
                openai_train=handles["openai-train"], openai_validation=handles["openai-validation"],
                sharegpt_train=handles["sharegpt-train"], sharegpt_validation=handles["sharegpt-validation"],
                parquet=handles["parquet"], min_trained_quality=min_quality,
            ))
            for m in kept_rows:
                conv = _member(m, copies.get(m["id"]))
                aggregate.add(conv, conversation_id=m["id"])
                exports.add(conv, split[m["id"]], conversation_id=m["id"])
            export_stats = exports.close()
            stats = aggregate.stats
        written += [key[f] for f in handles]
        with store.open_read(key["jsonl"]) as jsonl_in, store.writer(key["json"]) as json_out:
            write_training_json(dataset_name=name, created_date=created, consultant=consultant, stats=stats,
                                jsonl_in=jsonl_in, json_out=json_out)
        written.append(key["json"])
        store.put_bytes(key["axolotl"], axolotl_config(
            train_path=OUTPUTS["messages-train"], validation_path=OUTPUTS["messages-validation"]).encode())
        written.append(key["axolotl"])
        by_batch = Counter(m["batch_job_id"] for m in kept_rows)
        sources = [
            SourceBatch(
                batch_id=b, name=batches[b]["name"], model=batches[b]["model"],
                generator="simulator" if any(m["generator"] == "simulator" for m in kept_rows if m["batch_job_id"] == b) else "claude",
                created=batches[b]["created_at"], conversations=n,
                cost_usd=round(sum(m["cost_usd"] or 0 for m in kept_rows if m["batch_job_id"] == b), 6),
            )
            for b, n in sorted(by_batch.items(), key=lambda kv: str(kv[0])) if b in batches
        ]
        card = dataset_card(
            name=name, stats=stats, sources=sources, export=export_stats, dedup=dedup.stats, min_quality=min_quality,
            quality_filtered_out=len(filtered), validation_fraction=VALIDATION_FRACTION, split_seed=SPLIT_SEED,
            version=version, description=tf["description"], created_date=created,
            train_file=OUTPUTS["messages-train"], validation_file=OUTPUTS["messages-validation"],
        )
        store.put_bytes(key["card"], card.encode())
        written.append(key["card"])
        outputs = {fmt: {"path": key[fmt], "bytes": store.size(key[fmt])} for fmt in OUTPUTS}
        for fmt, split_name in (("messages", "train"), ("messages", "validation"), ("openai", "train"),
                                ("openai", "validation"), ("sharegpt", "train"), ("sharegpt", "validation")):
            outputs[f"{fmt}-{split_name}"]["lines"] = export_stats.lines(fmt, split_name)
        outputs["jsonl"]["lines"] = stats.total_training_pairs
        outputs["parquet"]["rows"] = export_stats.parquet_rows
        qs = stats.quality_summary
        dist = stats.dataset_metadata(dataset_name=name, created_date=created).scaffolding_distribution.model_dump()
        values = {
            "version": version,
            "status": "active",
            "json_file_path": key["json"],
            "jsonl_file_path": key["jsonl"],
            "conversation_count": stats.conversation_count,
            "total_training_pairs": stats.total_training_pairs,
            "json_file_size": outputs["json"]["bytes"],
            "jsonl_file_size": outputs["jsonl"]["bytes"],
            "avg_quality_score": qs.avg_quality_score,
            "min_quality_score": qs.min_quality_score,
            "max_quality_score": qs.max_quality_score,
            "human_reviewed_count": qs.human_reviewed_count,
            "scaffolding_distribution": dist,
            "outputs": outputs,
            "stats": {
                "members": len(members),
                "quality_filtered_out": len(filtered),
                "exact_duplicates": dedup.stats.exact_duplicates,
                "near_duplicates": dedup.stats.near_duplicates,
                "train_conversations": export_stats.conversations_train,
                "validation_conversations": export_stats.conversations_validation,
                "estimated_tokens": stats.estimated_tokens,
                "dropped": [{"conversation_id": m["id"], "reason": d.reason, "duplicate_of": d.duplicate_of} for m, d in dropped],
                "filtered": [{"conversation_id": m["id"], "quality_score": m["quality_score"]} for m in filtered],
            },
            "conversation_ids": [m["id"] for m in kept_rows],
            "split": split,
            "built_by_run": context.run.run_id,
        }
        with engine.begin() as conn:
            tfq.record_version(conn, tf["id"], version_row, values)
    except BaseException as exc:
        # No partial version: this build owns v<N> (claimed above), so removing its keys can
        # never touch another build's files.
        for k in key.values():
            if store.exists(k):
                store.delete(k)
        tfq.release_version(engine, version_row)
        if isinstance(exc, MemberFileError):
            raise Failure(f"training file {name!r}: {exc}; no version was written") from exc
        raise

    return MaterializeResult(
        metadata={
            "version": version,
            "conversations": stats.conversation_count,
            "training_pairs": stats.total_training_pairs,
            "members": len(members),
            "quality_filtered_out": len(filtered),
            "exact_duplicates_removed": dedup.stats.exact_duplicates,
            "near_duplicates_removed": dedup.stats.near_duplicates,
            "train_conversations": export_stats.conversations_train,
            "validation_conversations": export_stats.conversations_validation,
            "estimated_tokens": stats.estimated_tokens,
            "avg_quality": qs.avg_quality_score,
            "min_quality": qs.min_quality_score,
            "max_quality": qs.max_quality_score,
            "location": f"{store.location}/{prefix}",
            "quality_histogram": MetadataValue.md(_histogram_md(stats.quality_histogram)),
            "scaffolding_distribution": MetadataValue.md(_distribution_md(dist)),
            "coverage_matrix": MetadataValue.md(coverage_matrix_md(kept_rows)),
            "outputs": MetadataValue.md(md_table(
                ["format", "path", "bytes", "lines/rows"],
                [(f, o["path"], o["bytes"], o.get("lines", o.get("rows", ""))) for f, o in outputs.items()],
            )),
            "dataset_card": MetadataValue.md(card),
        }
    )


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


def _result(problems: list[str], ok: str, metadata: dict[str, Any]) -> AssetCheckResult:
    return AssetCheckResult(
        passed=not problems,
        description=ok if not problems else f"{len(problems)} problem(s): {problems[0]}",
        metadata={**metadata, "problems": MetadataValue.md("\n".join(f"- {p}" for p in problems[:50]) or "None.")},
    )


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=True,
             description="The JSONL is schema-valid (every line a v4.0 training pair), the JSON's header is "
             "valid v4.0 dataset metadata, and the JSON holds exactly the JSONL's pairs.")
def training_file_schema_valid(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Schema validity of the latest version, streamed line by line."""
    from lora_assets.schemas.training import AggregateDatasetMetadata

    _, v = _latest(context, db)
    store = blobs.store()
    audit = audit_jsonl(_lines(store, v["jsonl_file_path"]))
    problems = [f"{v['jsonl_file_path']} {p}" for p in audit.invalid_lines]
    n = audit.pairs + len(audit.invalid_lines)
    # write_training_json puts the header on the first line and one pair per following line.
    json_lines = _lines(store, v["json_file_path"])
    head = next(json_lines, b"")
    try:
        header = json.loads(head.split(b',"training_pairs":[')[0] + b"}")
        AggregateDatasetMetadata.model_validate(header["dataset_metadata"])
    except (ValueError, KeyError) as exc:
        problems.append(f"{v['json_file_path']}: dataset_metadata invalid: {str(exc).splitlines()[0]}")
    json_pairs = sum(1 for line in json_lines if line.startswith(b"{"))
    if json_pairs != n:
        problems.append(f"{v['json_file_path']} holds {json_pairs} pairs, the JSONL {n}")
    return _result(problems, f"v{v['version']}: {n} valid training pairs", {"version": v["version"], "pairs": n})


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=True,
             description="JSONL line count = total_training_pairs; DB metadata (counts, sizes, quality "
             "min/avg/max, human_reviewed_count, scaffolding distribution) = the file contents.")
def training_file_metadata_matches(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Recompute every metadata figure from the JSONL (core.audit) and compare with the DB row."""
    _, v = _latest(context, db)
    store = blobs.store()
    audit = audit_jsonl(_lines(store, v["jsonl_file_path"]))
    problems = metadata_problems(audit, v)
    for label, key in (("jsonl_file_size", "jsonl_file_path"), ("json_file_size", "json_file_path")):
        if v[label] != store.size(v[key]):
            problems.append(f"{label}: DB says {v[label]!r}, file has {store.size(v[key])!r}")
    return _result(problems, f"v{v['version']}: DB metadata matches {audit.pairs} pairs in "
                   f"{len(audit.conversations)} conversations",
                   {"version": v["version"], "pairs": audit.pairs, "conversations": len(audit.conversations)})


@asset_check(asset=training_files, partitions_def=training_files_partitions, blocking=True,
             description="No conversation twice (its pairs form one contiguous block), and only "
             "conversations that are enriched in the DB.")
def training_file_members_valid(context, db: DomainDB, blobs: BlobStoreResource) -> AssetCheckResult:
    """Duplicate and eligibility rules of the seed, on the built file."""
    _, v = _latest(context, db)
    audit = audit_jsonl(_lines(blobs.store(), v["jsonl_file_path"]))
    with db.engine().connect() as conn:
        statuses = tfq.enrichment_statuses(conn, audit.conversations)
    problems = member_problems(audit, v["conversation_ids"] or [], statuses)
    return _result(problems, f"v{v['version']}: {len(audit.conversations)} distinct, enriched conversations",
                   {"conversations": len(audit.conversations)})


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
        table = pq.read_table(spool, columns=["conversation_id", "split"])
    if table.num_rows != v["total_training_pairs"]:
        problems.append(f"parquet: {table.num_rows} rows, {v['total_training_pairs']} training pairs")
    sides: dict[str, set[str]] = {}
    for cid, side in zip(table.column("conversation_id").to_pylist(), table.column("split").to_pylist(), strict=True):
        sides.setdefault(cid, set()).add(side)
    both = [c for c, s in sides.items() if len(s) > 1]
    problems += [f"conversation {c} is in both train and validation" for c in both]
    recorded = v.get("split") or {}
    if recorded and any(recorded.get(c) not in s for c, s in sides.items()):
        problems.append("parquet split column differs from the recorded split")
    return _result(problems, f"v{v['version']}: exports consistent, train/validation disjoint",
                   {"train_examples": counts.get("messages-train", 0), "validation_examples": counts.get("messages-validation", 0)})
