"""The Dagster instance the CLI and demo use: $DAGSTER_HOME, or one under the data dir."""

from __future__ import annotations

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
    """`settings.dagster_home` (DAGSTER_HOME) if set, else `<data_dir>/dagster_home` (created
    with telemetry off)."""
    s = settings or Settings.from_env()
    if s.dagster_home is not None:
        return s.dagster_home
    home = s.data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(EMBEDDED_DAGSTER_YAML)
    return home


def get_instance(settings: Settings | None = None) -> DagsterInstance:
    """The persistent instance (so runs made from the CLI show in `make ui`). Loaded from its
    directory rather than through `DagsterInstance.get()`, so no process environment is changed."""
    return DagsterInstance.from_config(str(dagster_home(settings)))
