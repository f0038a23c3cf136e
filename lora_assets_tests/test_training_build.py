"""`lora_assets.training_build` called directly, without Dagster: a batch is generated (real SDK
against the loopback simulator) and enriched once, then training files are built by the plain
function on SQLite + a local directory. Also the shared selection rule of store.training_files.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from sqlalchemy.engine import Engine

from lora_assets.core.aggregate import scan_training_json
from lora_assets.defs.resources import _ENGINES
from lora_assets.generation.simulator import ClaudeSimulator
from lora_assets.store import tables as t
from lora_assets.store import training_files as tfq
from lora_assets.store.blobs import BlobStore
from lora_assets.training_build import (
    OUTPUTS,
    BuildError,
    BuildPlan,
    build_training_file,
    judge_score_of,
    version_prefix,
)
from lora_assets_tests.defs import helpers as h

_TOKENIZER_TEXTS = [
    "I hear how worried you are about retirement; let us look at your savings together.",
    "A budget is a plan for your money, not a punishment. What matters most to you?",
    "Your emergency fund should cover three to six months of expenses before you invest more.",
] * 20


def tiny_tokenizer(path: Path) -> Path:
    """A tiny byte-level BPE tokenizer trained here (nothing downloaded), saved as `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_TOKENIZER_TEXTS, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


@dataclass
class Data:
    engine: Engine
    store: BlobStore
    batch_id: str
    ids: list[str]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    """One enriched batch (2 personas × 2 arcs × 1 topic) on SQLite + a local blob directory."""
    root = tmp_path_factory.mktemp("build")
    db_url, blobs = f"sqlite:///{root / 'lora.db'}", h.local_blobs(root / "blobs")
    engine = h.setup_store(db_url)
    with ClaudeSimulator() as sim, DagsterInstance.ephemeral() as instance:
        batch_id = h.plan(engine, 2, 2, 1, name="direct")
        assert h.run_batch(h.make_defs(db_url, blobs, sim), instance, batch_id).success
    yield Data(engine, blobs.store(), batch_id, [r["id"] for r in h.conversations(engine, batch_id)])
    _ENGINES.pop(db_url, None)
    engine.dispose()


def new_file(d: Data, ids: list[str], **kw: object) -> str:
    name = f"direct-{uuid.uuid4().hex[:8]}"
    tfq.create_training_file(d.engine, name=name, conversation_ids=ids, created_by="tests", **kw)
    return name


def versions(d: Data, name: str) -> list[tuple[int, str]]:
    v = t.training_file_versions
    with d.engine.connect() as conn:
        tf = tfq.get_training_file(conn, name)
        return [tuple(r) for r in conn.execute(sa.select(v.c.version, v.c.status).where(v.c.training_file_id == tf["id"]))]


def test_build_without_dagster_stores_and_records_the_version(data: Data) -> None:
    name = new_file(data, data.ids, description="built directly")
    result = build_training_file(BuildPlan(name=name), engine=data.engine, store=data.store, concurrency=4,
                                 run_id="run-direct-1")
    assert result.version == 1 and result.prefix == version_prefix(name, 1)
    assert result.members == result.conversations == len(data.ids)
    assert {m.conversation_id for m in result.kept} == set(data.ids)
    assert all(m.batch_name == "direct" and m.judge_score is None for m in result.kept)
    assert set(result.outputs) == set(OUTPUTS)
    assert set(data.store.list(result.prefix)) == {o.path for o in result.outputs.values()}
    assert all(data.store.size(o.path) == o.bytes for o in result.outputs.values())
    assert sum(result.quality_histogram) == len(data.ids)
    assert "built directly" in result.card and result.card == data.store.get_bytes(result.outputs["card"].path).decode()

    with data.engine.connect() as conn:
        v = tfq.get_version(conn, name)
    assert v["built_by_run"] == "run-direct-1" and v["total_training_pairs"] == result.training_pairs
    assert v["outputs"]["jsonl"] == result.outputs["jsonl"].model_dump(exclude_none=True)
    # the JSON document read back through its writer's module: header + every pair
    with data.store.open_read(v["json_file_path"]) as fh:
        scan = scan_training_json(fh)
    assert scan.header_error is None and scan.pairs == result.training_pairs
    assert scan.header["dataset_metadata"]["dataset_name"] == name

    again = build_training_file(BuildPlan(name=name), engine=data.engine, store=data.store, concurrency=1,
                                run_id="run-direct-2")
    assert again.version == 2 and versions(data, name) == [(1, "active"), (2, "active")]


def test_user_errors_are_build_errors_naming_the_file_and_leave_nothing(data: Data) -> None:
    with pytest.raises(BuildError, match="no training file named 'nobody'.*launch dialog"):
        build_training_file(BuildPlan(name="nobody"), engine=data.engine, store=data.store, concurrency=2, run_id="r")

    name = new_file(data, data.ids[:2], min_quality=5.0)
    with pytest.raises(BuildError, match=rf"training file '{name}': no conversation left after quality filter \(2\)"):
        build_training_file(BuildPlan(name=name), engine=data.engine, store=data.store, concurrency=2, run_id="r")
    assert versions(data, name) == [] and data.store.list(version_prefix(name, 1)) == []


def test_an_unusable_member_file_rolls_back_every_key(data: Data) -> None:
    name = new_file(data, data.ids)
    with data.engine.connect() as conn:
        victim = tfq.member_rows(conn, tfq.get_training_file(conn, name)["id"])[2]
    original = data.store.get_bytes(victim["enriched_file_path"])
    data.store.put_bytes(victim["enriched_file_path"], b'{"dataset_metadata": {"truncated')
    try:
        with pytest.raises(BuildError) as err:
            build_training_file(BuildPlan(name=name), engine=data.engine, store=data.store, concurrency=2, run_id="r")
    finally:
        data.store.put_bytes(victim["enriched_file_path"], original)
    message = str(err.value)
    assert f"training file {name!r}" in message and victim["id"] in message
    assert "not a valid v4.0 enriched conversation" in message and "no version was written" in message
    assert versions(data, name) == [] and data.store.list(version_prefix(name, 1)) == []


def test_judge_filter_counts_the_unjudged_separately_from_low_quality(data: Data) -> None:
    judged = data.ids[0]
    h.update_row(data.engine, judged, judge_scores={"overall": 4.2})
    try:
        name = new_file(data, data.ids, min_judge_score=4.0)
        result = build_training_file(BuildPlan(name=name), engine=data.engine, store=data.store, concurrency=2,
                                     run_id="r")
    finally:
        h.update_row(data.engine, judged, judge_scores=None)
    assert [m.conversation_id for m in result.kept] == [judged] and result.kept[0].judge_score == 4.2
    assert (result.judge_filtered_out, result.quality_filtered_out) == (len(data.ids) - 1, 0)
    assert f"| excluded below Claude-judge score 4 or never judged | {len(data.ids) - 1} |" in result.card


def test_judge_score_of_reads_only_usable_judgements() -> None:
    assert judge_score_of({"overall": 3.5, "empathy_score": 4}) == 3.5
    assert judge_score_of({"error": "judge response unusable", "overall": 5}) is None
    assert judge_score_of(None) is None and judge_score_of({}) is None


def test_selection_rule_is_batches_or_conversations(data: Data) -> None:
    with data.engine.connect() as conn:
        for kw in ({}, {"batches": [data.batch_id], "conversations": data.ids[:1]}):
            with pytest.raises(tfq.TrainingFileError, match="give either batches or conversations"):
                tfq.select_conversations(conn, **kw)
        assert sorted(tfq.select_conversations(conn, batches=[data.batch_id]).conversation_ids) == sorted(data.ids)
        with pytest.raises(tfq.TrainingFileError, match=r"unknown batch job id\(s\): \['nope'\]"):
            tfq.select_conversations(conn, batches=["nope"])
        picked = tfq.select_conversations(conn, conversations=[data.ids[0], "ghost"], skip_ineligible=True)
    assert picked.conversation_ids == [data.ids[0]] and picked.skipped == {"ghost": "no such conversation"}


def test_launch_request_thresholds_are_checked_before_anything_is_written(data: Data, tmp_path: Path) -> None:
    name = new_file(data, data.ids[:1])
    bad = tfq.LaunchRequest(conversations=data.ids[1:2], min_judge_score=7)
    with pytest.raises(tfq.TrainingFileError, match="min_judge_score 7.0 must be between 0 and 5"):
        tfq.apply_launch_request(data.engine, name, bad, by="tests")
    with data.engine.connect() as conn:
        assert [m["id"] for m in tfq.member_rows(conn, tfq.get_training_file(conn, name)["id"])] == data.ids[:1]


def test_a_named_tokenizer_changes_the_method_label_and_the_counts(data: Data, tmp_path: Path) -> None:
    path = tiny_tokenizer(tmp_path / "tokenizer.json")
    name = new_file(data, data.ids)
    estimate = build_training_file(BuildPlan(name=name), engine=data.engine, store=data.store, concurrency=2,
                                   run_id="r")
    counted = build_training_file(BuildPlan(name=name, tokenizer=str(path)), engine=data.engine, store=data.store,
                                  concurrency=2, run_id="r")
    assert estimate.lengths.method == "estimate: chars/4 + 10%"
    assert counted.lengths.method == str(path) and counted.lengths.examples.count == len(data.ids)
    assert counted.lengths.examples.max != estimate.lengths.examples.max  # really counted with the tokenizer
    assert f"Counted with the tokenizer `{path}`" in counted.card
    with data.engine.connect() as conn:
        stats = tfq.get_version(conn, name)["stats"]
    assert stats["tokenizer"] == str(path) and stats["lengths"]["method"] == str(path)
    axolotl = data.store.get_bytes(counted.outputs["axolotl"].path).decode()
    assert f"sequence_len: {counted.lengths.recommended_sequence_len}\n" in axolotl


def test_a_tokenizer_directory_with_a_chat_template_counts_what_the_trainer_counts(data: Data, tmp_path: Path) -> None:
    """The issue-25 rebuild: `tokenizer` names a directory holding tokenizer.json and a ChatML
    chat_template.jinja; the recorded max and trained-token figures equal transformers'
    apply_chat_template(..., return_assistant_tokens_mask=True) over the exported messages files."""
    import json

    transformers = pytest.importorskip("transformers")
    from lora_assets_tests.core.test_tokens_chat_template import CHATML

    folder = tmp_path / "tok"
    tiny_tokenizer(folder / "tokenizer.json")
    (folder / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    name = new_file(data, data.ids)
    built = build_training_file(BuildPlan(name=name, tokenizer=str(folder)), engine=data.engine, store=data.store,
                                concurrency=2, run_id="r")
    lengths = built.lengths
    assert lengths.counting == "chat_template" and lengths.chat_template == str(folder / "chat_template.jinja")

    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), chat_template=CHATML)
    counts = []
    for output in ("messages-train", "messages-validation"):
        for line in data.store.get_bytes(built.outputs[output].path).decode().splitlines():
            enc = tok.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True)
            counts.append((len(enc["input_ids"]), sum(enc["assistant_masks"])))
    assert lengths.examples.count == len(counts) == len(data.ids)
    assert lengths.examples.max == max(n for n, _ in counts)
    assert lengths.assistant_tokens == sum(m for _, m in counts)
    assert lengths.recommended_max_length >= lengths.examples.max and lengths.truncation is not None
    assert lengths.truncation.assistant_tokens_cut == 0
    assert f"its own chat template `{folder / 'chat_template.jinja'}`" in built.card
    assert f"**Trained (assistant) tokens:** {lengths.assistant_tokens:,}" in built.card
    axolotl = data.store.get_bytes(built.outputs["axolotl"].path).decode()
    assert f"sequence_len: {lengths.recommended_sequence_len}\n" in axolotl
    assert f'counted with "{folder / "tokenizer.json"}"' in axolotl


def test_a_bad_tokenizer_is_a_build_error_naming_the_path(data: Data, tmp_path: Path) -> None:
    name = new_file(data, data.ids[:1])
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    for given, reason in ((tmp_path / "missing.json", "does not exist"), (broken, "cannot be loaded"),
                          (tmp_path, "cannot be loaded")):
        with pytest.raises(BuildError, match="no version was written") as err:
            build_training_file(BuildPlan(name=name, tokenizer=str(given)), engine=data.engine, store=data.store,
                                concurrency=2, run_id="r")
        assert f"training file {name!r}" in str(err.value) and reason in str(err.value)
        assert str(given) in str(err.value)
    assert versions(data, name) == []


def test_exact_duplicate_decision_blocks_and_thresholds_configure_it() -> None:
    """The leakage check's decision on recorded figures, without a build."""
    from lora_assets.core.leakage import LeakageStats, LeakageThresholds
    from lora_assets.core.tokens import LengthStats
    from lora_assets.training_stats import Measured, leakage_problems, length_problems, recorded

    answer = "Let us look at what your emergency fund covers before we talk about investing any more of it."
    stats = LeakageStats()
    stats.add([{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}], "train", conversation_id="a")
    stats.add([{"role": "user", "content": "hey"}, {"role": "assistant", "content": answer}], "validation",
              conversation_id="b")
    lengths = LengthStats()
    lengths.add([{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}])
    measured = Measured(lengths=lengths.result(8), max_length=8, leakage=stats.result(),
                        leakage_thresholds=LeakageThresholds())
    again = recorded({"max_length": 8, **measured.stats()})  # what the checks read back from the version row
    blocking, _ = leakage_problems(again)
    assert len(blocking) == 1 and "validation b turn 1 ~ train a" in blocking[0]
    relaxed = again.model_copy(update={"leakage_thresholds": LeakageThresholds(max_exact_duplicate_turns=1)})
    assert leakage_problems(relaxed)[0] == []
    [cut] = length_problems(again)
    assert cut.startswith("1 example(s) exceed max_length 8 (estimate: chars/4 + 10%)")


def test_members_sharing_an_assistant_turn_stay_on_one_side(data: Data) -> None:
    """Every member's first answer rewritten to one shared text: grouping keeps them all in train,
    the build says so in one line, and the leakage guard has nothing to block."""
    import json

    from lora_assets.schemas import EnrichedConversation

    shared = "Before anything else, let us make sure your emergency fund covers three months of spending."
    originals: dict[str, bytes] = {}
    name = new_file(data, data.ids)
    with data.engine.connect() as conn:
        rows = tfq.member_rows(conn, tfq.get_training_file(conn, name)["id"])
    try:
        for row in rows:
            raw = originals[row["enriched_file_path"]] = data.store.get_bytes(row["enriched_file_path"])
            conv = EnrichedConversation.model_validate_json(raw)
            first = min((p for p in conv.training_pairs if p.target_response), key=lambda p: p.turn_number)
            # The answer also sits in later pairs' history: replace it everywhere it is quoted, as
            # the file writes it (pydantic: non-ASCII as is; json.dumps' \u escapes missed an
            # answer with a dash or a curly quote now and then, and that member split off).
            old, new = (json.dumps(t, ensure_ascii=False)[1:-1].encode() for t in (first.target_response, shared))
            assert old in raw, row["enriched_file_path"]
            data.store.put_bytes(row["enriched_file_path"], raw.replace(old, new))
        result = build_training_file(BuildPlan(name=name), engine=data.engine, store=data.store, concurrency=2,
                                     run_id="r-grouped")
    finally:
        for path, raw in originals.items():
            data.store.put_bytes(path, raw)
    assert (result.train_conversations, result.validation_conversations) == (len(data.ids), 0)
    assert result.split_groups.groups == 1 and result.split_groups.validation_lost >= 1
    assert result.leakage_blocking == [] and result.leakage.overlap.exact_duplicate_turns == 0
    assert result.leakage_warnings[0].startswith(f"no validation set: the {len(data.ids)} conversations form 1 group(s)")
    assert "**no validation set" in result.card
    axolotl = data.store.get_bytes(result.outputs["axolotl"].path).decode()
    assert "test_datasets" not in axolotl  # no empty validation file handed to Axolotl
    with data.engine.connect() as conn:
        stats = tfq.get_version(conn, name)["stats"]
    assert stats["split_groups"]["validation"] == 0
    # what training_file_leakage reads back from the version row: the same one line, as a warning
    from lora_assets.training_stats import split_problems

    assert split_problems(stats) == [result.leakage_warnings[0]]
    assert split_problems({}) == [] and split_problems(None) == []


def test_an_output_s3_refuses_while_the_build_goes_on_leaves_no_version_and_no_key(
        data: Data, s3_bucket: tuple[str, str]) -> None:
    """On S3 each output is completed in the background as soon as it is whole (the JSON and
    JSONL while pass 2 writes the exports). One that S3 refuses (the PutObject of the OpenAI
    validation export fails) fails the build as it is, not as a user error; then no key of the
    version is left (the JSON document, completed before, included), no multipart upload is open,
    and the version number is free: the next build takes it."""
    import boto3
    from botocore.exceptions import EndpointConnectionError

    from lora_assets.store.blobs import S3BlobStore

    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    store = S3BlobStore(client, bucket)
    name = new_file(data, data.ids)
    with data.engine.connect() as conn:
        members = tfq.member_rows(conn, tfq.get_training_file(conn, name)["id"])
    for m in members:
        store.put_bytes(m["enriched_file_path"], data.store.get_bytes(m["enriched_file_path"]))
    sent: list[str] = []

    def refuse(params: dict[str, object], **_: object) -> None:
        sent.append(str(params["Key"]))
        if str(params["Key"]).endswith(OUTPUTS["openai-validation"]):
            raise EndpointConnectionError(endpoint_url=endpoint)

    client.meta.events.register("provide-client-params.s3.PutObject", refuse, unique_id="refuse-one-output")
    with pytest.raises(EndpointConnectionError):
        build_training_file(BuildPlan(name=name), engine=data.engine, store=store, concurrency=2, run_id="r")
    assert any(k.endswith(f"/{name}.json") for k in sent)  # stored, then removed with the rest
    assert store.list(version_prefix(name, 1)) == [] and versions(data, name) == []
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    client.meta.events.unregister("provide-client-params.s3.PutObject", unique_id="refuse-one-output")
    result = build_training_file(BuildPlan(name=name), engine=data.engine, store=store, concurrency=2, run_id="r")
    assert result.version == 1 and versions(data, name) == [(1, "active")]
    assert sorted(store.list(version_prefix(name, 1))) == sorted(o.path for o in result.outputs.values())
    document = store.get_bytes(result.outputs["json"].path)
    assert scan_training_json(document.splitlines(keepends=True)).pairs == result.training_pairs
