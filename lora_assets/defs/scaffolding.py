"""Scaffolding assets (the DB tables the pipeline reads) and the completeness check."""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableMetadataValue,
    asset_check,
    multi_asset,
)

from lora_assets.core.completeness import CompletenessReport, completeness_report
from lora_assets.defs.report import TABLE_LIMIT, table
from lora_assets.defs.resources import BlobStoreResource, DomainDB
from lora_assets.store import db as dbq
from lora_assets.store.batches import coverage_counts
from lora_assets.store.scaffolding_files import ScaffoldingFileError

SCAFFOLDING_KEYS = ["personas", "emotional_arcs", "training_topics", "prompt_templates", "consultant_profile"]


@multi_asset(
    specs=[
        AssetSpec(key, group_name="scaffolding", description=f"The `{key}` scaffolding in the domain DB.")
        for key in SCAFFOLDING_KEYS
    ],
    can_subset=False,
)
def scaffolding(context: AssetExecutionContext, db: DomainDB, blobs: BlobStoreResource):
    """Load the scaffolding files into the domain DB: from LORA_SCAFFOLDING_DIR (a local directory
    or an s3:// prefix with the bundled layout) or the bundled data, validated as one bundle
    (every problem named by file, record and field), upserted by key in one transaction
    (idempotent), schema created first if missing."""
    engine = db.engine()
    dbq.init_schema(engine)
    try:
        bundle = blobs.load_scaffolding()
    except ScaffoldingFileError as exc:
        raise Failure(f"scaffolding at {blobs.scaffolding_dir or 'the bundled data'} was not loaded:\n{exc}",
                      allow_retries=False) from None
    counts = dbq.load_scaffolding(engine, bundle)
    sizes = {
        "personas": len(bundle.personas),
        "emotional_arcs": len(bundle.emotional_arcs),
        "training_topics": len(bundle.training_topics),
        "prompt_templates": len(bundle.prompt_templates),
        "consultant_profile": 1,
    }
    table_of = {"consultant_profile": "consultant_profiles"}
    for key in SCAFFOLDING_KEYS:
        c = counts[table_of.get(key, key)]
        yield MaterializeResult(
            asset_key=key,
            metadata={"source": blobs.scaffolding_dir or "bundled data", "records": sizes[key], "inserted": c["inserted"], "updated": c["updated"], "unchanged": c["unchanged"]},
        )


def coverage_table(report: CompletenessReport, limit: int = TABLE_LIMIT) -> TableMetadataValue:
    """Persona × arc conversation counts (summed over topics): one row per persona (first
    `limit`), a column per arc, and the row total."""
    by_pa: dict[tuple[str, str], int] = {}
    for cell in report.coverage:
        by_pa[(cell.persona_key, cell.arc_key)] = by_pa.get((cell.persona_key, cell.arc_key), 0) + cell.conversations
    columns: dict[str, type] = {"persona": str, **dict.fromkeys(report.arc_keys, int), "total": int}
    rows = []
    for persona in report.persona_keys:
        counts = [by_pa.get((persona, arc), 0) for arc in report.arc_keys]
        rows.append([persona, *counts, sum(counts)])
    return table(columns, rows, limit)


def coverage_summary(report: CompletenessReport) -> str:
    """Conversations per topic and how many persona × arc × topic combinations are covered."""
    by_topic = dict.fromkeys(report.topic_keys, 0)
    for cell in report.coverage:
        by_topic[cell.topic_key] = by_topic.get(cell.topic_key, 0) + cell.conversations
    text = (f"{report.counts.get('combinations_covered', 0)} of {report.counts.get('combinations', 0)} combinations "
            "covered. Conversations per topic: " + (", ".join(f"{k} {n}" for k, n in by_topic.items()) or "none") + ".")
    if report.unmatched_conversations:
        text += (f" {report.unmatched_conversations} conversation(s) reference a persona, arc or topic that is not in "
                 "the current scaffolding.")
    return text


@asset_check(
    asset=AssetKey("personas"),
    additional_deps=[AssetKey(k) for k in SCAFFOLDING_KEYS if k != "personas"],
    blocking=True,
    description="Every persona / arc / topic has its key fields, keys are unique, every template "
    "placeholder resolves, one template per tier. Metadata: missing-field report and the "
    "persona × arc × topic coverage matrix of existing conversations.",
)
def scaffolding_completeness(db: DomainDB) -> AssetCheckResult:
    """Scaffolding completeness, with a readable report."""
    with db.engine().connect() as conn:
        report = completeness_report(
            dbq.read_personas(conn),
            dbq.read_emotional_arcs(conn),
            dbq.read_training_topics(conn),
            dbq.read_prompt_templates(conn),
            dbq.read_consultant_profile(conn),
            coverage_counts(conn),
        )
    return AssetCheckResult(
        passed=report.passed,
        severity=AssetCheckSeverity.ERROR,
        description=report.summary(),
        metadata={
            "problems": len(report.problems),
            "missing_fields": table({"kind": str, "key": str, "field": str, "problem": str},
                                    ((p.kind, p.key, p.field, p.reason) for p in report.problems)),
            "coverage_matrix": coverage_table(report),
            "coverage": MetadataValue.text(coverage_summary(report)),
            **{f"count_{k}": v for k, v in report.counts.items()},
        },
    )
