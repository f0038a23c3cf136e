"""Scaffolding assets (the DB tables the pipeline reads) and the completeness check."""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset_check,
    multi_asset,
)

from lora_assets.core.completeness import completeness_report
from lora_assets.defs.resources import DomainDB
from lora_assets.store import db as dbq
from lora_assets.store.queries import coverage_counts
from lora_assets.store.scaffolding_files import load_bundle

SCAFFOLDING_KEYS = ["personas", "emotional_arcs", "training_topics", "prompt_templates", "consultant_profile"]


@multi_asset(
    specs=[
        AssetSpec(key, group_name="scaffolding", description=f"The `{key}` scaffolding in the domain DB.")
        for key in SCAFFOLDING_KEYS
    ],
    can_subset=False,
)
def scaffolding(context: AssetExecutionContext, db: DomainDB):
    """Load the bundled scaffolding files into the domain DB: validated as one bundle, upserted by
    key in one transaction (idempotent), schema created first if missing."""
    engine = db.engine()
    dbq.init_schema(engine)
    bundle = load_bundle()
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
            metadata={"records": sizes[key], "inserted": c["inserted"], "updated": c["updated"], "unchanged": c["unchanged"]},
        )


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
            "missing_fields": MetadataValue.md(report.missing_fields_markdown()),
            "coverage_matrix": MetadataValue.md(report.coverage_markdown()),
            **{f"count_{k}": v for k, v in report.counts.items()},
        },
    )
