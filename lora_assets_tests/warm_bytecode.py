"""Compile and cache the bytecode of what the code location, the demo and the test suite import:
`python -m lora_assets_tests.warm_bytecode`, run once by `make install`.

`uv pip install --compile-bytecode` compiled every module of the venv (about 19,000 files, most
never imported: ≈ 30 s of a 40 s install on a 2-core machine). Importing what is used compiles
about 6,000 in ≈ 10 s. Anything else a process imports later is compiled on first use and
cached, because the Makefile clears PYTHONDONTWRITEBYTECODE (set on these machines), so no
process compiles the same module twice.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

#: Third-party modules the stages, the servers the suite starts (Dagster webserver and daemon,
#: moto, the Claude simulator) and the tests import.
THIRD_PARTY = (
    "dagster", "dagster._cli", "dagster._daemon", "dagster_graphql", "dagster_webserver.webserver",
    "dagster_postgres", "dagster_aws.s3", "anthropic", "aiohttp", "httpx", "boto3", "botocore.session",
    "obstore", "psycopg2", "sqlalchemy", "pandas", "pyarrow.parquet", "tokenizers", "jinja2", "click",
    "moto.server", "moto.s3", "uvicorn", "playwright.sync_api", "transformers", "datasets", "hypothesis",
    "pytest", "xdist", "pytest_timeout",
)


def main() -> int:
    """Import every `lora_assets` module and `THIRD_PARTY`; print what could not be imported."""
    import lora_assets

    ours = [m.name for m in pkgutil.walk_packages(lora_assets.__path__, "lora_assets.") if not m.name.endswith("__main__")]
    names = ours + list(THIRD_PARTY)
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a module that cannot import here is compiled on first use
            failed.append(f"{name}: {exc.__class__.__name__}: {exc}")
    print(f"bytecode cached for {len(sys.modules)} modules" + (f"; not imported: {failed}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
