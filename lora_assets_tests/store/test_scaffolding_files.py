"""Loading scaffolding files: precise errors naming file, record, key and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_assets.schemas import ScaffoldingBundle
from lora_assets.store.scaffolding_files import (
    BUNDLED_DIR,
    FILE_NAMES,
    ScaffoldingFileError,
    bundle_to_dir,
    load_bundle,
)


@pytest.fixture(scope="module")
def bundle() -> ScaffoldingBundle:
    return load_bundle(BUNDLED_DIR)


@pytest.fixture
def scaffold_dir(tmp_path: Path, bundle: ScaffoldingBundle) -> Path:
    return bundle_to_dir(bundle, tmp_path / "scaffolding")


def _edit(directory: Path, name: str, change: Any) -> None:
    path = directory / name
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def _error(directory: Path) -> ScaffoldingFileError:
    with pytest.raises(ScaffoldingFileError) as info:
        load_bundle(directory)
    return info.value


def test_bundled_dir_loads() -> None:
    assert BUNDLED_DIR.is_dir()
    assert load_bundle() == load_bundle(BUNDLED_DIR)


def test_round_trip(bundle: ScaffoldingBundle, scaffold_dir: Path) -> None:
    assert sorted(p.name for p in scaffold_dir.iterdir()) == sorted(FILE_NAMES)
    assert load_bundle(scaffold_dir) == bundle
    # deterministic ids are not written out; they are derived from the keys again on load
    assert "id" not in json.loads((scaffold_dir / "personas.json").read_text())[0]


def test_round_trip_keeps_explicit_ids(tmp_path: Path, bundle: ScaffoldingBundle) -> None:
    persona = bundle.personas[0].model_copy(update={"id": "11111111-2222-3333-4444-555555555555"})
    custom = bundle.model_copy(update={"personas": [persona, *bundle.personas[1:]]})
    assert load_bundle(bundle_to_dir(custom, tmp_path)).personas[0].id == persona.id


def test_persona_missing_name(scaffold_dir: Path) -> None:
    _edit(scaffold_dir, "personas.json", lambda d: d[3].pop("name"))
    key = json.loads((scaffold_dir / "personas.json").read_text())[3]["persona_key"]
    err = _error(scaffold_dir)
    assert str(err) == f"personas.json: record 3 (persona_key {key!r}): field 'name': Field required"


def test_demographics_as_string(scaffold_dir: Path) -> None:
    def change(d: list[dict[str, Any]]) -> None:
        d[3]["persona_key"] = "busy_parent"
        d[3]["demographics"] = "Age 37, male, Urban/Suburban"

    _edit(scaffold_dir, "personas.json", change)
    err = _error(scaffold_dir)
    assert str(err) == (
        "personas.json: record 3 (persona_key 'busy_parent'): field 'demographics': Input should be a valid dictionary"
    )


def test_financial_background_of_wrong_type_merges_union_reasons(scaffold_dir: Path) -> None:
    _edit(scaffold_dir, "personas.json", lambda d: d[0].update(financial_background=42))
    err = _error(scaffold_dir)
    assert err.problems == [
        "personas.json: record 0 (persona_key 'pragmatic_optimist'): field 'financial_background': "
        "Input should be a valid string, or Input should be a valid dictionary"
    ]


def test_duplicate_persona_key(scaffold_dir: Path) -> None:
    _edit(scaffold_dir, "personas.json", lambda d: [d[2].update(persona_key="x"), d[5].update(persona_key="x")])
    problems = _error(scaffold_dir).problems
    assert "personas.json: duplicate persona_key 'x' at records 2 and 5" in problems
    # 'x' is also too short for the key pattern: each record says so, naming itself
    assert problems[0].startswith("personas.json: record 2 (persona_key 'x'): field 'persona_key': String should match")
    assert problems[1].startswith("personas.json: record 5 (persona_key 'x'): field 'persona_key': String should match")


def test_duplicate_valid_key_is_the_only_problem(scaffold_dir: Path) -> None:
    _edit(scaffold_dir, "training_topics.json", lambda d: d[4].update(topic_key=d[1]["topic_key"]))
    err = _error(scaffold_dir)
    assert err.problems == ["training_topics.json: duplicate topic_key 'estate_planning_basics' at records 1 and 4"]


def test_record_without_key_is_named_by_index(scaffold_dir: Path) -> None:
    _edit(scaffold_dir, "emotional_arcs.json", lambda d: d[1].pop("arc_key"))
    assert _error(scaffold_dir).problems == ["emotional_arcs.json: record 1: field 'arc_key': Field required"]


def test_unknown_field_and_nested_consultant_field(scaffold_dir: Path) -> None:
    _edit(scaffold_dir, "training_topics.json", lambda d: d[0].update(difficulty="hard"))
    _edit(scaffold_dir, "consultant_profile.json", lambda d: d["communication_style"].update(techniques="listen"))
    problems = _error(scaffold_dir).problems
    assert problems == [
        "training_topics.json: record 0 (topic_key 'mortgage_payoff_strategy'): field 'difficulty': "
        "Extra inputs are not permitted",
        "consultant_profile.json: field 'communication_style.techniques': Input should be a valid list",
    ]


def test_wrong_shapes(scaffold_dir: Path) -> None:
    (scaffold_dir / "emotional_arcs.json").write_text('{"arc_key": "a"}', encoding="utf-8")
    _edit(scaffold_dir, "personas.json", lambda d: d.append("not a record"))
    (scaffold_dir / "consultant_profile.json").write_text("[]", encoding="utf-8")
    problems = _error(scaffold_dir).problems
    assert "emotional_arcs.json: expected a JSON array of records, got a JSON object" in problems
    assert any(p.startswith("personas.json: record ") and p.endswith("expected a JSON object, got a JSON string") for p in problems)
    assert "consultant_profile.json: expected a JSON object, got a JSON array" in problems


def test_invalid_json(scaffold_dir: Path) -> None:
    (scaffold_dir / "training_topics.json").write_text('[\n  {"topic_key": "a",}\n]\n', encoding="utf-8")
    err = _error(scaffold_dir)
    assert len(err.problems) == 1
    assert err.problems[0].startswith("training_topics.json: invalid JSON at line 2 column ")


def test_missing_file(scaffold_dir: Path) -> None:
    (scaffold_dir / "prompt_templates.json").unlink()
    err = _error(scaffold_dir)
    assert err.problems == [f"prompt_templates.json: file not found (expected at {scaffold_dir / 'prompt_templates.json'})"]


def test_all_problems_reported_together(scaffold_dir: Path) -> None:
    (scaffold_dir / "prompt_templates.json").unlink()
    (scaffold_dir / "consultant_profile.json").write_text("{", encoding="utf-8")
    _edit(scaffold_dir, "personas.json", lambda d: d[0].pop("archetype"))
    err = _error(scaffold_dir)
    assert [p.split(":")[0] for p in err.problems] == ["personas.json", "prompt_templates.json", "consultant_profile.json"]
    assert str(err) == "\n".join(err.problems)


def test_missing_directory(tmp_path: Path) -> None:
    assert "not found" in str(_error(tmp_path / "nope"))


def test_duplicate_keys_nul_and_sizes_are_refused_with_their_place(scaffold_dir: Path) -> None:
    from lora_assets.store.scaffolding_files import ScaffoldingLimits

    path = scaffold_dir / "personas.json"
    text = path.read_text(encoding="utf-8")
    # A key twice inside the nested demographics object of record 0 (JSON alone keeps the last).
    path.write_text(text.replace('"demographics": {', '"demographics": {"age": 1, "age": 2, ', 1), encoding="utf-8")
    _edit(scaffold_dir, "training_topics.json", lambda d: d[2]["key_concepts"].append("bad\u0000text"))
    problems = _error(scaffold_dir).problems
    assert any(p.startswith("personas.json: record 0") and "field 'demographics': key 'age' appears more than once" in p
               for p in problems), problems
    assert any(p.startswith("training_topics.json: record 2") and "field 'key_concepts[" in p and "NUL" in p
               for p in problems), problems

    small = ScaffoldingLimits(max_record_bytes=300, max_template_chars=100, max_file_bytes=1_000_000)
    path.write_text(text, encoding="utf-8")
    _edit(scaffold_dir, "training_topics.json", lambda d: d[2]["key_concepts"].pop())
    with pytest.raises(ScaffoldingFileError) as info:
        load_bundle(scaffold_dir, small)
    assert any("over the limit of 300 bytes per record" in p for p in info.value.problems)
    assert any("field 'body'" in p and "LORA_MAX_TEMPLATE_CHARS" in p for p in info.value.problems)
    with pytest.raises(ScaffoldingFileError, match="over the limit of 100 bytes.*LORA_MAX_INPUT_FILE_BYTES"):
        load_bundle(scaffold_dir, ScaffoldingLimits(max_file_bytes=100))


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_load_scaffolding_reads_the_same_layout_from_an_s3_prefix(
    s3_bucket: tuple[str, str], scaffold_dir: Path, bundle: ScaffoldingBundle
) -> None:
    from lora_assets.store.scaffolding_files import load_scaffolding

    endpoint, bucket = s3_bucket
    client = _s3(endpoint)
    personas = json.loads((scaffold_dir / "personas.json").read_text())[:2]
    (scaffold_dir / "personas.json").write_text(json.dumps(personas))
    for name in FILE_NAMES:
        client.upload_file(str(scaffold_dir / name), bucket, f"team/scaffolding/{name}")
    loaded = load_scaffolding(f"s3://{bucket}/team/scaffolding/", s3_client=client)
    assert [p.persona_key for p in loaded.personas] == [p["persona_key"] for p in personas]
    assert len(loaded.training_topics) == len(bundle.training_topics)
    # The default is the bundled data; a local directory is read as it is.
    assert len(load_scaffolding("").personas) == len(bundle.personas)
    assert len(load_scaffolding(scaffold_dir).personas) == 2


def test_load_scaffolding_from_s3_names_each_missing_or_invalid_object(
    s3_bucket: tuple[str, str], scaffold_dir: Path
) -> None:
    from lora_assets.store.scaffolding_files import load_scaffolding

    endpoint, bucket = s3_bucket
    client = _s3(endpoint)
    for name in FILE_NAMES:
        if name != "training_topics.json":
            client.upload_file(str(scaffold_dir / name), bucket, f"p/{name}")
    with pytest.raises(ScaffoldingFileError) as missing:
        load_scaffolding(f"s3://{bucket}/p", s3_client=client)
    assert missing.value.problems == [f"s3://{bucket}/p/training_topics.json: not found"]

    client.put_object(Bucket=bucket, Key="p/training_topics.json", Body=b"[{]")
    with pytest.raises(ScaffoldingFileError) as invalid:
        load_scaffolding(f"s3://{bucket}/p", s3_client=client)
    assert len(invalid.value.problems) == 1
    assert invalid.value.problems[0].startswith(f"s3://{bucket}/p/training_topics.json: ")
    assert "lora-scaffolding-" not in str(invalid.value)


def test_load_scaffolding_from_s3_refuses_an_object_over_the_size_limit_before_fetching_it(
    s3_bucket: tuple[str, str], scaffold_dir: Path
) -> None:
    from lora_assets.store.scaffolding_files import ScaffoldingLimits, load_scaffolding

    endpoint, bucket = s3_bucket
    client = _s3(endpoint)
    for name in FILE_NAMES:
        client.upload_file(str(scaffold_dir / name), bucket, f"big/{name}")
    size = (scaffold_dir / "personas.json").stat().st_size
    limits = ScaffoldingLimits(max_file_bytes=size - 1)
    with pytest.raises(ScaffoldingFileError) as refused:
        load_scaffolding(f"s3://{bucket}/big", limits, s3_client=client)
    assert f"s3://{bucket}/big/personas.json: {size:,} bytes, over the limit of {size - 1:,} bytes" in str(refused.value)
    assert "LORA_MAX_INPUT_FILE_BYTES" in str(refused.value)
