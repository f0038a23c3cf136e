"""Dagster wiring: one module per stage, plus resources, partitions and automation."""

import warnings

from dagster import PreviewWarning

# Partitioned asset checks (one result per batch / training file) are "preview" in Dagster 1.13;
# we depend on them knowingly, so their warning is noise in every CLI command and log.
warnings.filterwarnings("ignore", category=PreviewWarning)
