"""Resources built from settings carry every setting the code location reads: the scaffolding
assets apply the same limits as `lora-assets init` (they used to apply the defaults whatever the
environment said)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_assets.defs.resources import build_resources
from lora_assets.settings import Settings
from lora_assets.store.scaffolding_files import BUNDLED_DIR, ScaffoldingFileError, bundle_to_dir, load_bundle


def test_scaffolding_assets_apply_the_configured_limits(tmp_path: Path) -> None:
    own = bundle_to_dir(load_bundle(BUNDLED_DIR), tmp_path / "own")
    personas = json.loads((own / "personas.json").read_text())
    personas[2]["communication_style"] = "chatty " * 400
    (own / "personas.json").write_text(json.dumps(personas))
    env = {"LORA_DATA_DIR": str(tmp_path / "data"), "LORA_SCAFFOLDING_DIR": str(own)}

    assert len(build_resources(Settings.from_env(env))["blobs"].load_scaffolding().personas) == len(personas)
    strict = build_resources(Settings.from_env({**env, "LORA_MAX_SCAFFOLDING_RECORD_BYTES": "2000"}))["blobs"]
    with pytest.raises(ScaffoldingFileError, match=r"personas.json: record 2 .*over the limit of 2,000 bytes per record "
                       r"\(raise it with LORA_MAX_SCAFFOLDING_RECORD_BYTES"):
        strict.load_scaffolding()
    short = build_resources(Settings.from_env({**env, "LORA_MAX_TEMPLATE_CHARS": "500"}))["blobs"]
    with pytest.raises(ScaffoldingFileError, match="over the limit of 500 .*LORA_MAX_TEMPLATE_CHARS"):
        short.load_scaffolding()
