"""Dynamic partitions: one per batch job, one per training file."""

from dagster import DynamicPartitionsDefinition

batch_jobs_partitions = DynamicPartitionsDefinition(name="batch_jobs")
training_files_partitions = DynamicPartitionsDefinition(name="training_files")
