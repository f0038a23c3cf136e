"""Dagster wiring."""
