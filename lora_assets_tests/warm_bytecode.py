"""Compile and cache the bytecode of what the code location, the demo and the test suite import:
`python -m lora_assets_tests.warm_bytecode`, run once by `make install`.

`uv pip install --compile-bytecode` compiled every module of the venv (about 19,000 files, most
never imported: ≈ 30 s of a 40 s install on a 2-core machine). Importing what is used compiles
about 6,000 (≈ 22 s in one process, 12.5 s in two, on this machine). Anything else a process
imports later is compiled on first use and cached, because the Makefile clears
PYTHONDONTWRITEBYTECODE (set on these machines), so no process compiles the same module twice.
`make install` runs `--group 0` and `--group 1` at once, one process per core.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

#: Third-party modules the stages, the servers the suite starts (Dagster webserver and daemon,
#: moto, the Claude simulator) and the tests import, in two groups with few dependencies in
#: common: one process imports the first (with every `lora_assets` module), another the second.
GROUPS = (
    ("dagster", "dagster._cli", "dagster._daemon", "dagster_graphql", "dagster_webserver.webserver",
     "dagster_postgres", "dagster_aws.s3", "sqlalchemy", "psycopg2", "obstore", "tokenizers", "jinja2", "click",
     "pyarrow.parquet"),
    ("transformers", "datasets", "pandas", "moto.server", "moto.s3", "boto3", "botocore.session", "anthropic",
     "aiohttp", "httpx2", "uvicorn", "playwright.sync_api", "hypothesis", "pytest", "xdist", "pytest_timeout"),
)


def main() -> int:
    """Import the modules of `--group` (0: `GROUPS[0]` and every `lora_assets` module, 1:
    `GROUPS[1]`; both when not given); print what could not be imported."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, choices=(0, 1))
    args = parser.parse_args()
    import lora_assets

    names: list[str] = []
    if args.group in (None, 0):
        names += [*GROUPS[0], *(m.name for m in pkgutil.walk_packages(lora_assets.__path__, "lora_assets.")
                                if not m.name.endswith("__main__"))]
    if args.group in (None, 1):
        names += GROUPS[1]
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
