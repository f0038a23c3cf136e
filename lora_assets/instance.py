"""The Dagster instance the CLI and demo use: $DAGSTER_HOME, or one under the data dir."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterInstance

from lora_assets.settings import Settings

EMBEDDED_DAGSTER_YAML = """\
# Embedded instance made by lora-assets (SQLite storage under this directory).
telemetry:
  enabled: false
nux:
  enabled: false
"""


def dagster_home(settings: Settings | None = None) -> Path:
    """$DAGSTER_HOME if set, else `<data_dir>/dagster_home` (created with telemetry off)."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = (settings or Settings.from_env()).data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(EMBEDDED_DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance(settings: Settings | None = None) -> DagsterInstance:
    """The persistent instance (so runs made from the CLI show in `make ui`)."""
    dagster_home(settings)
    return DagsterInstance.get()
