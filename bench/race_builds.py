"""Two `lora-assets training-file build` processes of one training file at once, N trials, on
the embedded default (SQLite, local blobs, SQLite Dagster instance) and on production parts
(PostgreSQL domain DB and Dagster instance, S3 on a moto server). After each trial,
`training-file list`, `show` and `download` must all name the highest recorded version.

    .venv/bin/python bench/race_builds.py [--trials 10] [--engines sqlite,postgresql] [--root DIR]

`--root` runs the CLI of another checkout (`python -m` imports the package from its working
directory), e.g. the code before the fix.

Prints one line per trial and a JSON summary; exits 1 when any trial disagrees.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lora_assets.cli"]
PG_ADMIN = os.environ.get("LORA_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)


def must(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        raise SystemExit(f"setup step failed ({result.returncode}): {result.args}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(engine: str, root: Path, cleanups: list) -> tuple[dict[str, str], str]:
    """The environment of one engine's trials, and its domain DB URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORA_", "DAGSTER_", "ANTHROPIC_"))}
    env["LORA_DATA_DIR"] = str(root / "data")
    if engine == "sqlite":
        return env, f"sqlite:///{root / 'data' / 'lora.db'}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    names = [f"lora_race_{uuid.uuid4().hex[:8]}", f"dagster_race_{uuid.uuid4().hex[:8]}"]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    cleanups.append(drop)
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{names[0]}"
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "lora_assets_tests.s3_server", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cleanups.append(lambda: (moto.terminate(), moto.wait(10)))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    import boto3

    endpoint = f"http://127.0.0.1:{port}"
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="race")
    env.update(LORA_DATABASE_URL=url, DAGSTER_HOME=str(home), DAGSTER_PG_HOST="127.0.0.1", DAGSTER_PG_PORT="5432",
               DAGSTER_PG_USER="postgres", DAGSTER_PG_PASSWORD="", DAGSTER_PG_DB=names[1],
               LORA_S3_BUCKET="race", LORA_S3_ENDPOINT_URL=endpoint)
    return env, url


def version_in(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text, re.M)
    return int(match.group(1)) if match else None


def trials(engine: str, count: int) -> dict[str, object]:
    cleanups: list = []
    root = Path(tempfile.mkdtemp(prefix=f"race-{engine}-"))
    try:
        env, url = environment(engine, root, cleanups)
        must(cli(env, "init"))
        must(cli(env, "batch", "create", "--persona", "pragmatic_optimist", "--arc", "confusion_to_clarity",
                 "--topic", "mortgage_payoff_strategy", "--per-combination", "2", "--name", "race", "--run"))
        must(cli(env, "training-file", "create", "tf", "--batch", "race"))
        db = sa.create_engine(url)
        agree = 0
        rows = []
        for trial in range(1, count + 1):
            procs = [subprocess.Popen([*CLI, "training-file", "build", "tf"], env=env, cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
            outs = [p.communicate(timeout=600)[0] for p in procs]
            codes = [p.returncode for p in procs]
            listed = version_in(r"^tf\s+v(\d+)", must(cli(env, "training-file", "list")))
            shown = version_in(r"^tf v(\d+)", must(cli(env, "training-file", "show", "tf")))
            downloaded = version_in(r"/v(\d+)/", must(cli(env, "training-file", "download", "tf", "--format", "jsonl")))
            with db.connect() as conn:
                highest = conn.execute(sa.text(
                    "SELECT max(v.version) FROM training_file_versions v JOIN training_files f "
                    "ON f.id = v.training_file_id WHERE f.name = 'tf' AND v.status = 'active'")).scalar()
                current = conn.execute(sa.text("SELECT current_version FROM training_files WHERE name = 'tf'")).scalar()
            ok = listed == shown == downloaded == highest == current
            agree += ok
            rows.append({"trial": trial, "build_exit_codes": codes, "list": listed, "show": shown,
                         "download": downloaded, "current_version": current, "highest": highest, "agree": ok})
            print(f"{engine} trial {trial}: builds exit {codes}, list v{listed} show v{shown} download v{downloaded} "
                  f"current v{current} highest v{highest} -> {'agree' if ok else 'DISAGREE'}", flush=True)
            for code, out in zip(codes, outs, strict=True):
                if code != 0:
                    print("   " + out.strip().splitlines()[-1], flush=True)
        db.dispose()
        return {"engine": engine, "trials": count, "agree": agree, "both_builds_succeeded":
                sum(r["build_exit_codes"] == [0, 0] for r in rows), "rows": rows}
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - best effort
                print(f"cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--root", type=Path, default=None, help="checkout whose lora_assets the CLI runs")
    args = parser.parse_args()
    global ROOT
    ROOT = (args.root or ROOT).resolve()
    started = time.monotonic()
    results = [trials(engine, args.trials) for engine in args.engines.split(",")]
    summary = {r["engine"]: {k: r[k] for k in ("trials", "agree", "both_builds_succeeded")} for r in results}
    print(json.dumps({"summary": summary, "seconds": round(time.monotonic() - started, 1)}))
    return 0 if all(r["agree"] == r["trials"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
