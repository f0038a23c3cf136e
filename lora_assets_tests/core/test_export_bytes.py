"""The export lines are assembled from each message's JSON-encoded content (encoded once for
the three chat formats) and the Parquet history from each turn's JSON encoded once per
conversation: byte for byte what `json.dumps` of the documents gives (what the writer did)."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq

from lora_assets.core.export import ExportWriter, chat_example, openai_messages, sharegpt_conversations
from lora_assets_tests.core.test_aggregate import make_conversation

_TEXTS = ['plain', 'quote " and \\ backslash', "tab\tnew\nline \u2028 sep", "ünïcödé → ✓ 😀", "\x00\x1f control",
          "</script>", ""]


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def test_chat_lines_and_parquet_history_are_json_dumps_of_the_documents() -> None:
    convs = [make_conversation(f"c{i}", pairs=3, answers=[_TEXTS[i % 7], _TEXTS[(i + 1) % 7] + "!", "ok"],
                               questions=[_TEXTS[(i + 2) % 7] + "?", "q2", _TEXTS[(i + 3) % 7]],
                               quality=[2.0, 4.5, 3.0], unanswered_last=i % 3 == 0) for i in range(7)]
    handles = {k: io.BytesIO() for k in ("mt", "ot", "st", "pq")}
    writer = ExportWriter(messages_train=handles["mt"], openai_train=handles["ot"], sharegpt_train=handles["st"],
                          parquet=handles["pq"], min_trained_quality=3.0)
    expected = {"mt": b"", "ot": b"", "st": b""}
    for conv in convs:
        writer.add(conv, "train")
        example = chat_example(conv)
        assert example is not None
        expected["mt"] += _dumps({"messages": example.messages})
        messages = openai_messages(example, 3.0)
        if any(m.get("weight") == 1 for m in messages):
            expected["ot"] += _dumps({"messages": messages})
        expected["st"] += _dumps({"conversations": sharegpt_conversations(example)})
    writer.close()
    assert {k: handles[k].getvalue() for k in expected} == expected
    handles["pq"].seek(0)
    rows = pq.read_table(handles["pq"]).to_pylist()
    pairs = [p for conv in convs for p in sorted(conv.training_pairs, key=lambda p: p.turn_number)]
    assert [r["history_json"] for r in rows] == [
        json.dumps([t.model_dump() for t in p.conversation_history], ensure_ascii=False, separators=(",", ":"))
        for p in pairs]
