"""What a person reads in the UI's metadata: sample conversations and the dataset card as clean
markdown, and the local store's files served for the metadata links (a real HTTP server)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lora_assets.defs.samples import card_markdown, escape_md, render_conversation
from lora_assets.store.file_server import serve_directory

CARD = """---
pretty_name: advisor-conversations
language:
- en
configs:
- config_name: default
  data_files:
  - split: train
    path: messages-train.jsonl
---
# advisor-conversations

Say the <name> fear out loud, then & only then plan.

```json
{"messages": [{"role": "user", "content": "<keep>"}]}
```
"""


def test_card_front_matter_becomes_a_table_and_text_is_escaped() -> None:
    md = card_markdown(CARD)
    assert md.startswith("**Hugging Face front matter**")
    assert "| pretty\\_name | advisor-conversations |" in md
    assert '| language | \\["en"\\] |' in md
    assert "\n---\n" not in md.split("| key | value |")[1].split("# advisor")[0].replace("|---|---|", "")
    assert "Say the &lt;name&gt; fear out loud, then &amp; only then plan." in md
    assert '{"messages": [{"role": "user", "content": "<keep>"}]}' in md  # code stays literal
    assert card_markdown("# no front matter <x>") == "# no front matter &lt;x&gt;"


def test_a_conversation_renders_persona_arc_topic_then_turns() -> None:
    md = render_conversation(persona="Dana (The <Planner>)", arc="fear → confidence", topic="Estate *basics*",
                             turns=[{"role": "user", "content": "I keep putting it off."},
                                    {"role": "assistant", "content": "Let's name the fear: <name> it."}],
                             cost_usd=0.00123, title="Sample 1")
    assert md.splitlines()[0] == "#### Sample 1"
    assert "**Persona:** Dana (The \\<Planner\\>) · **Arc:** fear → confidence · **Topic:** Estate \\*basics\\*" in md
    assert "**Cost:** $0.001230" in md
    assert md.index("**Client:** I keep putting it off.") < md.index("**Advisor:** Let's name the fear: \\<name\\> it.")
    assert escape_md("a|b") == "a\\|b"


def test_the_file_server_serves_the_store_and_nothing_outside_it(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    (root / "training-files" / "x" / "v1").mkdir(parents=True)
    (root / "training-files" / "x" / "v1" / "train.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "secret.txt").write_text("no")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    server = serve_directory(root, port=0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/training-files/x/v1/train.jsonl") as r:
            assert r.read() == b'{"a": 1}\n' and r.headers["Content-Type"] == "text/plain; charset=utf-8"
        for path in ("/link", "/../secret.txt", "/%2e%2e/secret.txt", "/training-files/"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path)
            assert err.value.code == 404, path
    finally:
        server.shutdown()
        server.server_close()
