"""Former home of the named queries, now split by concern: `batches` (planning, progress),
`scaffolding` (lookups by key, planning snapshots), `claims` (leases, generation ledger),
`conversations` (a batch's rows), `common` (clock, blob keys).

Only a re-export remains, for a module being rewritten elsewhere at the time of the split;
import from the modules above instead.
"""

from lora_assets.store.common import now  # used by store/training_files.py

__all__ = ["now"]
