"""Fine-tuning exports: HF/TRL messages, OpenAI chat (weights), ShareGPT, Parquet, Axolotl."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jinja2
import pyarrow.parquet as pq
import pytest
import yaml
from jinja2 import nodes
from jinja2.ext import Extension

from lora_assets.core.aggregate import DuplicateMemberError
from lora_assets.core.export import (
    PARQUET_SCHEMA,
    AxolotlConfigError,
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


def test_parquet_columns_are_what_pyarrow_makes_of_the_lists_and_need_no_pandas() -> None:
    """The writer builds each column from buffers: the arrays (values, nulls, types) are
    `pa.array`'s of the same lists, and writing Parquet imports no pandas (`pa.array` on a list
    does, ≈ 0.4 s of CPU per build process)."""
    import random

    import pyarrow as pa

    from lora_assets.core.export import _arrow_column
    from lora_assets_tests.core.factories import modules_loaded_by

    rng = random.Random(6)
    texts = ["", "a", "é", "日本語", "emoji 🎉", "x" * 300, None]
    for _ in range(200):
        n = rng.randint(0, 9)
        for type_, choices in ((pa.string(), texts), (pa.int32(), [0, 1, -3, 2**31 - 1]), (pa.float64(), [0.0, 4.25, -1.5, None])):
            values = [rng.choice(choices) for _ in range(n)]
            expected = pa.array(values, type_)
            got = _arrow_column(values, type_)
            assert got.equals(expected) and got.null_count == expected.null_count and got.type == type_
    code = ("import io; from lora_assets.core.export import ExportWriter; "
            "from lora_assets_tests.core.test_aggregate import make_conversation; "
            "w = ExportWriter(messages_train=io.BytesIO(), parquet=io.BytesIO(), row_group_rows=2); "
            "[w.add(make_conversation(f't{i}', pairs=3), 'train') for i in range(3)]; w.close()")
    assert modules_loaded_by(code, ("pandas",)) == []


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


#: What Axolotl 0.19 documents for a `type: chat_template` dataset entry (`SFTDataset` in
#: axolotl/utils/schemas/datasets.py), with the values it accepts where they are a closed set.
AXOLOTL_SFT_DATASET_KEYS = {
    "path", "split", "type", "input_transform", "shards", "shards_idx", "preprocess_shards", "conversation",
    "chat_template", "chat_template_jinja", "data_files", "input_format", "name", "ds_type", "field",
    "field_human", "field_model", "field_messages", "field_tools", "field_thinking", "template_thinking_key",
    "message_field_role", "message_field_content", "message_property_mappings", "message_field_training",
    "message_field_training_detail", "split_thinking", "logprobs_field", "temperature", "roles_to_train",
    "train_on_eos", "roles", "drop_system_message", "trust_remote_code", "revision",
}
AXOLOTL_TRAIN_ON_EOS = {"all", "turn", "last"}
#: Top-level keys the snippet may set (all documented in Axolotl's config reference).
AXOLOTL_TOP_LEVEL_KEYS = {"chat_template", "chat_template_jinja", "sequence_len", "datasets", "test_datasets", "val_set_size"}
#: Axolotl's `ChatTemplate` enum; `tokenizer_default_fallback_<name>` is accepted as well.
AXOLOTL_CHAT_TEMPLATES = {
    "alpaca", "chatml", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken", "gemma", "cohere",
    "llama3", "llama3_2_vision", "llama4", "phi_3", "phi_35", "deepseek_v2", "deepseek_v3", "jamba", "jinja",
    "qwen_25", "qwen3", "tokenizer_default", "exaone", "metharme", "pixtral", "llava", "qwen2_vl", "gemma3",
}
#: Axolotl's role names (target roles of `roles:`).
AXOLOTL_ROLES = {"system", "user", "assistant", "tool"}


def _assert_axolotl_schema(cfg: dict) -> None:
    """The parsed snippet uses only documented Axolotl keys and values."""
    assert set(cfg) <= AXOLOTL_TOP_LEVEL_KEYS
    template = cfg["chat_template"]
    assert template in AXOLOTL_CHAT_TEMPLATES or (
        template.startswith("tokenizer_default_fallback_")
        and template.removeprefix("tokenizer_default_fallback_") in AXOLOTL_CHAT_TEMPLATES
    )
    if template == "jinja":
        assert isinstance(cfg["chat_template_jinja"], str) and cfg["chat_template_jinja"]
    assert isinstance(cfg["sequence_len"], int) and cfg["sequence_len"] > 0
    for section in ("datasets", "test_datasets"):
        for ds in cfg.get(section, []):
            assert set(ds) <= AXOLOTL_SFT_DATASET_KEYS, set(ds) - AXOLOTL_SFT_DATASET_KEYS
            assert ds["type"] == "chat_template"
            assert isinstance(ds["path"], str)
            assert ds["train_on_eos"] in AXOLOTL_TRAIN_ON_EOS
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in ds["message_property_mappings"].items())
            assert set(ds["roles"]) <= AXOLOTL_ROLES
            assert all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in ds["roles"].values())
            assert isinstance(ds["roles_to_train"], list)
    if "test_datasets" in cfg:
        assert cfg["val_set_size"] == 0


def test_axolotl_config_snippet() -> None:
    text = axolotl_config(train_path="train.messages.jsonl", validation_path="validation.messages.jsonl", sequence_len=1536)
    assert text.startswith("# Axolotl")
    assert "SNIPPET" in text
    cfg = yaml.safe_load(text)
    _assert_axolotl_schema(cfg)
    [train] = cfg["datasets"]
    assert train == {
        "path": "train.messages.jsonl",
        "ds_type": "json",
        "type": "chat_template",
        "field_messages": "messages",
        "message_property_mappings": {"role": "role", "content": "content"},
        "roles": {"user": ["user"], "assistant": ["assistant"], "system": ["system"]},
        "roles_to_train": ["assistant"],
        "train_on_eos": "turn",
    }
    [test] = cfg["test_datasets"]
    assert test["path"] == "validation.messages.jsonl" and test["split"] == "train"
    assert {k: v for k, v in test.items() if k not in ("path", "split")} == {k: v for k, v in train.items() if k != "path"}
    # Works on a base without a chat template: its own if it has one, ChatML otherwise.
    assert cfg["chat_template"] == "tokenizer_default_fallback_chatml"
    assert cfg["val_set_size"] == 0
    assert cfg["sequence_len"] == 1536

    only_train = yaml.safe_load(axolotl_config(train_path='odd "name": x.jsonl'))
    _assert_axolotl_schema(only_train)
    assert only_train["datasets"][0]["path"] == 'odd "name": x.jsonl'
    assert "test_datasets" not in only_train and "val_set_size" not in only_train
    assert only_train["sequence_len"] == 2048  # unknown lengths: the default


def test_axolotl_sequence_len_says_how_it_was_counted() -> None:
    text = axolotl_config(train_path="t.jsonl", sequence_len=1152, sequence_len_counted_with="estimate: chars/4 + 10%")
    assert ('# sequence_len: the longest example rounded up to a multiple of 64, counted with '
            '"estimate: chars/4 + 10%"\nsequence_len: 1152\n') in text
    cfg = yaml.safe_load(text)  # a comment: the settings are unchanged
    _assert_axolotl_schema(cfg)
    assert cfg["sequence_len"] == 1152
    assert "counted with" not in axolotl_config(train_path="t.jsonl", sequence_len=1152)


def test_axolotl_config_explicit_template_choices() -> None:
    llama = yaml.safe_load(axolotl_config(train_path="t.jsonl", chat_template="llama3"))
    _assert_axolotl_schema(llama)
    assert llama["chat_template"] == "llama3"
    jinja_text = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    custom = yaml.safe_load(axolotl_config(train_path="t.jsonl", chat_template_jinja=jinja_text))
    _assert_axolotl_schema(custom)
    assert custom["chat_template"] == "jinja" and custom["chat_template_jinja"] == jinja_text
    for bad in ("chatml2", "tokenizer_default_fallback_nope", "jinja"):
        with pytest.raises(AxolotlConfigError):
            axolotl_config(train_path="t.jsonl", chat_template=bad)
    with pytest.raises(AxolotlConfigError):
        axolotl_config(train_path="t.jsonl", sequence_len=0)


# ChatML as Axolotl's fallback applies it, with `{% generation %}` around what an assistant turn
# trains (its content and, with train_on_eos: turn, its end-of-turn marker) — the convention
# transformers uses for `return_assistant_tokens_mask`.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
)
_OPEN, _CLOSE = "\x02", "\x03"


class _GenerationMarks(Extension):
    """`{% generation %}…{% endgeneration %}`: wraps the block in sentinel characters so the
    trainable character spans can be read back from the rendered text."""

    tags = {"generation"}

    def parse(self, parser):  # type: ignore[no-untyped-def]
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller):  # type: ignore[no-untyped-def]
        return _OPEN + caller() + _CLOSE


def _render_with_mask(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    marked = jinja2.Environment(extensions=[_GenerationMarks]).from_string(CHATML).render(messages=messages)
    text, spans, start = [], [], None
    for ch in marked:
        if ch == _OPEN:
            start = sum(map(len, text))
        elif ch == _CLOSE:
            spans.append((start, sum(map(len, text))))
        else:
            text.append(ch)
    return "".join(text), spans


def test_exported_messages_render_through_chatml_with_assistant_turns_trainable() -> None:
    conv = make_conversation("c1", pairs=3)
    handles, _ = _export([(conv, "train")])
    [example] = _lines(handles["messages_train"])
    messages = example["messages"]
    text, spans = _render_with_mask(messages)

    assert text.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n")
    assert text.count("<|im_start|>") == len(messages)
    trained = "".join(text[a:b] for a, b in spans)
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    # One trainable span per assistant turn: exactly its content plus its end-of-turn marker.
    assert [text[a:b] for a, b in spans] == [a + "<|im_end|>" for a in assistants]
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] not in trained  # system/user text is context only
    # Nothing else is trained: the role headers stay outside the spans.
    assert "<|im_start|>" not in trained and "user\n" not in trained


def test_axolotl_snippet_says_how_to_train_the_chatml_turn_end_only_for_the_fallback() -> None:
    """axolotl 0.19 on a base without a template (docs/axolotl-check.md) trains no <|im_end|>
    unless it is added as a token: the snippet carries the lines to uncomment, commented out
    (on a base with its own template they would be wrong), and only for the ChatML fallback."""
    import yaml

    fallback = axolotl_config(train_path="train.messages.jsonl", validation_path="validation.messages.jsonl")
    uncommented = yaml.safe_load(fallback.replace("# tokens:", "tokens:").replace("# eot_tokens:", "eot_tokens:"))
    assert uncommented["tokens"] == ["<|im_start|>", "<|im_end|>"] and uncommented["eot_tokens"] == ["<|im_end|>"]
    assert "tokens" not in yaml.safe_load(fallback)
    assert "eot_tokens" not in axolotl_config(train_path="t.jsonl", chat_template="llama3")


def test_render_then_write_is_add_byte_for_byte() -> None:
    """A build renders each member before its split is known and writes it afterwards: the files
    and counts are those `add` makes."""
    from lora_assets.core.export import render

    convs = [make_conversation(f"c{i}", pairs=i % 3 + 1) for i in range(6)]
    sides = ["train", "validation", "train", "train", "validation", "train"]

    def files(use_render: bool) -> tuple[list[bytes], object]:
        bufs = [io.BytesIO() for _ in range(7)]
        with ExportWriter(messages_train=bufs[0], messages_validation=bufs[1], openai_train=bufs[2],
                          openai_validation=bufs[3], sharegpt_train=bufs[4], sharegpt_validation=bufs[5],
                          parquet=bufs[6], min_trained_quality=3.9) as writer:
            for conv, side in zip(convs, sides, strict=True):
                if use_render:
                    rendered, _ = render(conv, min_trained_quality=3.9)
                    writer.write(rendered, side)  # type: ignore[arg-type]
                else:
                    writer.add(conv, side)  # type: ignore[arg-type]
            stats = writer.close()
        return [b.getvalue() for b in bufs[:6]] + [pq.read_table(io.BytesIO(bufs[6].getvalue())).to_pylist()], stats

    assert files(True) == files(False)
