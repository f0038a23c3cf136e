"""Fixtures shared by the Dagster-level tests (a module may override `sim` with its own faults)."""

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance

from lora_assets.generation.simulator import ClaudeSimulator


@pytest.fixture
def sim() -> Iterator[ClaudeSimulator]:
    """A loopback Claude simulator with no faults, stopped afterwards."""
    with ClaudeSimulator() as s:
        yield s


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """An ephemeral Dagster instance."""
    with DagsterInstance.ephemeral() as inst:
        yield inst
