"""Pure stage logic: functions from model to model, no I/O, no Dagster."""
