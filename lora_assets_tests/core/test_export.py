"""Fine-tuning exports: HF/TRL messages, OpenAI chat (weights), ShareGPT, Parquet, Axolotl."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lora_assets.core.aggregate import DuplicateMemberError
from lora_assets.core.export import (
    PARQUET_SCHEMA,
    ConversationShapeError,
    ExportWriter,
    InvalidSplitError,
    MissingExportHandleError,
    axolotl_config,
    chat_example,
)
from lora_assets.schemas.training import HistoryTurn
from lora_assets_tests.core.test_aggregate import SYSTEM_PROMPT, make_conversation


def _lines(buf: io.BytesIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _all_handles() -> dict[str, io.BytesIO]:
    names = [f"{fmt}_{split}" for fmt in ("messages", "openai", "sharegpt") for split in ("train", "validation")]
    return {name: io.BytesIO() for name in names} | {"parquet": io.BytesIO()}


def _export(convs_splits, **kwargs):
    handles = _all_handles()
    with ExportWriter(**handles, **kwargs) as writer:
        for conv, split in convs_splits:
            writer.add(conv, split)
    return handles, writer.close()


def _assert_alternates(messages: list[dict], role_key: str = "role", names=("system", "user", "assistant")) -> None:
    system, user, assistant = names
    assert messages[0][role_key] == system
    rest = [m[role_key] for m in messages[1:]]
    assert rest == [user if i % 2 == 0 else assistant for i in range(len(rest))]
    assert rest[-1] == assistant


def test_messages_example_built_from_last_pair_roles_alternate() -> None:
    conv = make_conversation("c1", pairs=3)
    handles, stats = _export([(conv, "train")])
    [example] = _lines(handles["messages_train"])
    messages = example["messages"]
    assert set(example) == {"messages"}
    _assert_alternates(messages)
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert len(messages) == 1 + 2 * 3
    last = conv.training_pairs[-1]
    assert messages[-2]["content"] == last.current_user_input
    assert messages[-1]["content"] == last.target_response
    assert [m["content"] for m in messages[1:-2]] == [t.content for t in last.conversation_history]
    assert stats.messages_train == 1 and stats.messages_validation == 0
    assert stats.assistant_turns == 3


def test_trailing_unanswered_user_turn_dropped() -> None:
    conv = make_conversation("c1", pairs=3, unanswered_last=True)
    handles, stats = _export([(conv, "train")])
    [example] = _lines(handles["messages_train"])
    _assert_alternates(example["messages"])
    assert len(example["messages"]) == 1 + 2 * 2
    assert stats.pairs_train == 3


def test_conversation_without_any_answer_is_skipped_and_counted() -> None:
    conv = make_conversation("c1", pairs=1, unanswered_last=True)
    handles, stats = _export([(conv, "train")])
    assert handles["messages_train"].getvalue() == b""
    assert stats.skipped_without_answer == 1
    assert stats.parquet_rows == 1  # the pair itself is still a row


def test_splits_go_to_their_own_handles_and_line_counts_reported() -> None:
    convs = [(make_conversation(f"t{i}"), "train") for i in range(4)] + [
        (make_conversation(f"v{i}"), "validation") for i in range(2)
    ]
    handles, stats = _export(convs)
    for fmt in ("messages", "openai", "sharegpt"):
        assert len(_lines(handles[f"{fmt}_train"])) == stats.lines(fmt, "train") == 4
        assert len(_lines(handles[f"{fmt}_validation"])) == stats.lines(fmt, "validation") == 2
    assert stats.conversations_train == 4 and stats.conversations_validation == 2
    assert stats.pairs_train == 12 and stats.pairs_validation == 6
    assert stats.estimated_tokens_train > 0 and stats.estimated_tokens_validation > 0


def test_messages_export_loads_with_hugging_face_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    from datasets import load_dataset

    convs = [
        (make_conversation("t1", pairs=3), "train"),
        (make_conversation("t2", pairs=1), "train"),  # shortest example
        (make_conversation("t3", pairs=2, unanswered_last=True), "train"),
        (make_conversation("t4", pairs=2, legacy=True, answers=["Ça — ✓", "日本"]), "train"),
        (make_conversation("v1", pairs=2), "validation"),
    ]
    train = tmp_path / "train.messages.jsonl"
    validation = tmp_path / "validation.messages.jsonl"
    with train.open("wb") as tr, validation.open("wb") as va, ExportWriter(
        messages_train=tr, messages_validation=va
    ) as writer:
        for conv, split in convs:
            writer.add(conv, split)

    ds = load_dataset("json", data_files=str(train), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 4
    assert list(ds.features) == ["messages"]
    feature = ds.features["messages"]
    inner = getattr(feature, "feature", feature[0] if isinstance(feature, list) else feature)
    assert set(inner) == {"role", "content"}
    for row in ds:
        _assert_alternates(row["messages"])
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
    assert ds[3]["messages"][-1]["content"] == "日本"

    both = load_dataset(
        "json",
        data_files={"train": str(train), "validation": str(validation)},
        cache_dir=str(tmp_path / "cache"),
    )
    assert both["validation"].num_rows == 1
    assert both["validation"].features == both["train"].features


def test_openai_weights_follow_pair_quality() -> None:
    conv = make_conversation("c1", pairs=3, quality=[3.0, 4.0, 5.0])
    handles, stats = _export([(conv, "train")], min_trained_quality=3.5)
    [example] = _lines(handles["openai_train"])
    messages = example["messages"]
    _assert_alternates(messages)
    assistants = [m for m in messages if m["role"] == "assistant"]
    assert [m["weight"] for m in assistants] == [0, 1, 1]
    assert all("weight" not in m for m in messages if m["role"] != "assistant")
    assert stats.openai_untrained_turns == 1
    # The HF messages file carries no OpenAI-only keys.
    [hf] = _lines(handles["messages_train"])
    assert all(set(m) == {"role", "content"} for m in hf["messages"])


def test_openai_weights_all_one_without_threshold_and_untrainable_example_left_out() -> None:
    handles, stats = _export([(make_conversation("c1", pairs=2, quality=2.0), "train")])
    [example] = _lines(handles["openai_train"])
    assert [m["weight"] for m in example["messages"] if m["role"] == "assistant"] == [1, 1]

    handles, stats = _export(
        [(make_conversation("c1", pairs=2, quality=2.0), "train"), (make_conversation("c2"), "train")],
        min_trained_quality=3.0,
    )
    assert stats.openai_train == 1
    assert stats.openai_skipped_untrainable == 1
    assert stats.messages_train == 2  # the threshold only shapes the OpenAI file


def test_sharegpt_roles() -> None:
    handles, _ = _export([(make_conversation("c1", pairs=2), "train")])
    [example] = _lines(handles["sharegpt_train"])
    assert set(example) == {"conversations"}
    turns = example["conversations"]
    assert all(set(t) == {"from", "value"} for t in turns)
    _assert_alternates(turns, role_key="from", names=("system", "human", "gpt"))


def test_parquet_reads_back_one_row_per_pair() -> None:
    convs = [(make_conversation(f"t{i}", pairs=3), "train") for i in range(5)] + [
        (make_conversation("v0", pairs=2, legacy=True), "validation")
    ]
    handles, stats = _export(convs, row_group_rows=4)
    buf = io.BytesIO(handles["parquet"].getvalue())
    parquet = pq.ParquetFile(buf)
    table = parquet.read()
    assert table.num_rows == stats.parquet_rows == 17
    assert table.schema.equals(PARQUET_SCHEMA)
    assert parquet.num_row_groups == stats.parquet_row_groups > 1  # written as it went
    rows = table.to_pylist()
    assert [r["split"] for r in rows].count("validation") == 2
    first = rows[0]
    conv0 = convs[0][0]
    assert first["id"] == "t0_turn1" and first["conversation_id"] == "t0" and first["turn_number"] == 1
    assert first["persona_key"] == "pragmatic_optimist"
    assert first["input"] == conv0.training_pairs[0].current_user_input
    assert first["target"] == conv0.training_pairs[0].target_response
    assert json.loads(rows[2]["history_json"]) == [t.model_dump() for t in conv0.training_pairs[2].conversation_history]
    assert rows[-1]["topic_key"] is None  # legacy
    assert rows[0]["quality_score"] == 4.0


def test_empty_parquet_export_is_valid() -> None:
    buf = io.BytesIO()
    stats = ExportWriter(parquet=buf).close()
    assert stats.parquet_rows == 0
    assert pq.read_table(io.BytesIO(buf.getvalue())).num_rows == 0


def test_duplicate_conversation_refused() -> None:
    writer = ExportWriter(messages_train=io.BytesIO())
    writer.add(make_conversation("x1"), "train")
    with pytest.raises(DuplicateMemberError, match="x1"):
        writer.add(make_conversation("x1"), "train")


def test_missing_handle_and_bad_split_refused() -> None:
    writer = ExportWriter(messages_train=io.BytesIO())
    with pytest.raises(MissingExportHandleError, match="'v1'.*validation"):
        writer.add(make_conversation("v1"), "validation")
    with pytest.raises(InvalidSplitError, match="test"):
        writer.add(make_conversation("v2"), "test")  # type: ignore[arg-type]


def test_history_out_of_order_or_contradicting_pairs_is_refused() -> None:
    conv = make_conversation("bad", pairs=2)
    last = conv.training_pairs[-1]
    swapped = [
        HistoryTurn(turn_number=1, role="assistant", content=last.conversation_history[1].content),
        HistoryTurn(turn_number=2, role="user", content=last.conversation_history[0].content),
    ]
    broken = conv.model_copy(
        update={"training_pairs": [conv.training_pairs[0], last.model_copy(update={"conversation_history": swapped})]}
    )
    with pytest.raises(ConversationShapeError, match="'bad'.*expected 'user'"):
        chat_example(broken)

    edited = [last.conversation_history[0], last.conversation_history[1].model_copy(update={"content": "different"})]
    contradicting = conv.model_copy(
        update={"training_pairs": [conv.training_pairs[0], last.model_copy(update={"conversation_history": edited})]}
    )
    writer = ExportWriter(messages_train=io.BytesIO())
    with pytest.raises(ConversationShapeError, match="bad_turn1"):
        writer.add(contradicting, "train")
    assert writer.stats.messages_train == 0


def test_axolotl_config_snippet() -> None:
    text = axolotl_config(train_path="train.messages.jsonl", validation_path="validation.messages.jsonl")
    assert text.startswith("# Axolotl")
    assert "SNIPPET" in text
    cfg = yaml.safe_load(text)
    [train] = cfg["datasets"]
    assert train == {
        "path": "train.messages.jsonl",
        "ds_type": "json",
        "type": "chat_template",
        "field_messages": "messages",
        "message_property_mappings": {"role": "role", "content": "content"},
        "roles_to_train": ["assistant"],
        "train_on_eos": "turn",
    }
    [test] = cfg["test_datasets"]
    assert test["path"] == "validation.messages.jsonl" and test["split"] == "train"
    assert cfg["chat_template"] == "tokenizer_default"
    assert cfg["val_set_size"] == 0

    only_train = yaml.safe_load(axolotl_config(train_path='odd "name": x.jsonl'))
    assert only_train["datasets"][0]["path"] == 'odd "name": x.jsonl'
    assert "test_datasets" not in only_train
