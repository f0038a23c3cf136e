"""Issue 23 case 5 as a user meets it: `lora-assets run` while PostgreSQL goes away long enough
for the run's claims to lapse (short LORA_CLAIM_TTL_S), then comes back. Prints the command's
exit code, its stderr line count, whether a traceback or a Dagster STEP_FAILURE appeared, and
its last line (which must carry the reason).

    .venv/bin/python bench/run_outage_cli.py [--outage-s 8] [--ttl-s 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lora_assets_tests.tcp_proxy import TcpProxy  # noqa: E402

PG_ADMIN = os.environ.get("LORA_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
CLI = [sys.executable, "-m", "lora_assets.cli"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage-s", type=float, default=8.0)
    parser.add_argument("--ttl-s", type=float, default=3.0)
    args = parser.parse_args()
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"lora_outage_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        with TcpProxy("127.0.0.1", 5432) as proxy, tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("LORA_", "DAGSTER_", "ANTHROPIC_"))}
            env.update(LORA_DATA_DIR=f"{tmp}/data", LORA_DATABASE_URL=f"postgresql+psycopg2://postgres@127.0.0.1:"
                       f"{proxy.port}/{name}", LORA_CLAIM_TTL_S=str(args.ttl_s), LORA_SIMULATOR_LATENCY_S="1.0",
                       LORA_MAX_CONCURRENCY="2")
            subprocess.run([*CLI, "init"], env=env, check=True, capture_output=True, cwd=ROOT)
            subprocess.run([*CLI, "batch", "create", "--persona", "pragmatic_optimist", "--arc", "confusion_to_clarity",
                            "--per-combination", "1", "--name", "outage"], env=env, check=True, capture_output=True,
                           cwd=ROOT)
            started = time.monotonic()
            proc = subprocess.Popen([*CLI, "run", "outage"], env=env, cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(12)  # the run is requesting by now (process start + planning the requests)
            proxy.stop()
            time.sleep(args.outage_s)
            proxy.resume()
            out, err = proc.communicate(timeout=600)
            lines = err.strip().splitlines()
            print(f"exit {proc.returncode} after {time.monotonic() - started:.1f}s; stderr lines {len(lines)}; "
                  f"traceback {'Traceback' in err or 'Stack Trace' in err}; STEP_FAILURE {'STEP_FAILURE' in err}")
            print("stderr:\n" + "\n".join("  " + line[:400] for line in lines))
            print("last line: " + (lines[-1] if lines else ""))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
