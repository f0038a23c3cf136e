"""S3 requests for small objects in a helper process: `python -m lora_assets.store.s3_io`.

A stage reads and writes a few small objects per conversation, and botocore spends about a
millisecond of CPU on each request (signing, events, parsing), under the stage's GIL: with 32
threads waiting on S3 and the stage's own work (parsing, enrichment, a build's hashing) sharing
one interpreter, each slowed the other. `S3IOProcess` sends GET / PUT / HEAD of small objects to
one helper process with its own interpreter, boto3 client and thread pool; the stage's threads
only pass bytes through a pipe (tens of microseconds each). Streamed uploads, listings and
presigned URLs stay on the stage's own client (`blobs.S3BlobStore`): they are few.

Protocol (stdin → helper → stdout): length-prefixed pickled tuples. A request is `(id, op,
bucket, key, body, if_none_match)`, an answer `(id, ok, value)`: the bytes read, None, the
object's size or existence, or on failure `("client_error", response, operation)` (rebuilt as
botocore's ClientError, so callers read `.response["Error"]["Code"]` as before) or
`("error", type name, message)` (raised as `S3IOError`). The helper's first frame says it is
ready; it exits when its stdin closes. If it dies, every waiting call fails with `HelperGone`,
which the store answers by making the request again with its own client (GET, HEAD and a PUT
of the same bytes are safe to repeat), and goes on with that client.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pickle
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

_LENGTH = struct.Struct("<I")


class S3IOError(RuntimeError):
    """A request the helper could not make (not an S3 error answer: those are ClientError)."""


class HelperGone(S3IOError):
    """The helper process is gone (exited, or its pipe broke): the request may not have been
    made, and can be made again another way."""


def _write_frame(out: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LENGTH.pack(len(data)) + data)
    out.flush()


def _read_frame(source: IO[bytes]) -> Any:
    head = source.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    size = _LENGTH.unpack(head)[0]
    data = source.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class S3IOProcess:
    """GET / PUT / HEAD of small S3 objects through a helper process (see the module docstring).
    Thread-safe; one per endpoint and pool size per process (`shared`)."""

    def __init__(self, endpoint_url: str, connections: int) -> None:
        self.endpoint_url, self.connections = endpoint_url, connections
        package_root = str(Path(__file__).resolve().parents[2])  # where `lora_assets` is imported from
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lora_assets.store.s3_io", endpoint_url or "", str(connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)})
        self._send = threading.Lock()
        self._ids = itertools.count()
        self._pending: dict[int, Future[Any]] = {}
        self._ready: Future[None] = Future()
        self.dead: str | None = None
        self._reader = threading.Thread(target=self._read_answers, name="s3-io-answers", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read_answers(self) -> None:
        assert self._proc.stdout is not None
        try:
            _read_frame(self._proc.stdout)  # "ready"
            self._ready.set_result(None)
            while True:
                ident, ok, value = _read_frame(self._proc.stdout)
                future = self._pending.pop(ident)
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(_rebuilt(value))
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            self._fail(f"the S3 I/O process exited ({type(exc).__name__}, code {self._proc.poll()})")

    def _fail(self, reason: str) -> None:
        self.dead = reason
        if not self._ready.done():
            self._ready.set_exception(HelperGone(reason))
        for ident in list(self._pending):
            future = self._pending.pop(ident, None)
            if future is not None and not future.done():
                future.set_exception(HelperGone(reason))

    def call(self, op: str, bucket: str, key: str, body: bytes | None = None, if_none_match: str | None = None) -> Any:
        """One request (`get`, `put`, `head`), answered by the helper; raises what it raised."""
        if self.dead:
            raise HelperGone(self.dead)
        self._ready.result()
        ident = next(self._ids)
        future: Future[Any] = Future()
        self._pending[ident] = future
        try:
            with self._send:
                assert self._proc.stdin is not None
                _write_frame(self._proc.stdin, (ident, op, bucket, key, body, if_none_match))
        except OSError as exc:
            self._pending.pop(ident, None)
            self._fail(f"the S3 I/O process does not listen ({type(exc).__name__})")
            raise HelperGone(self.dead) from exc
        return future.result()

    def cpu_seconds(self) -> float:
        """CPU (user + system) the helper has used so far (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def peak_rss_mb(self) -> float:
        """The helper's peak resident memory (VmHWM; 0 where /proc is not available)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return 0.0

    def close(self) -> None:
        """Let the helper finish what it has and exit."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()


def _rebuilt(value: Any) -> BaseException:
    kind, *rest = value
    if kind == "client_error":
        from botocore.exceptions import ClientError

        response, operation = rest
        return ClientError(response, operation)
    return S3IOError(f"{rest[0]}: {rest[1]}")


_SHARED: dict[tuple[str, int], S3IOProcess] = {}
_SHARED_LOCK = threading.Lock()


def shared(endpoint_url: str, connections: int) -> S3IOProcess:
    """The process's helper for this endpoint and pool size (started on first use, and again if
    the last one died); stopped when the process exits."""
    key = (endpoint_url, connections)
    with _SHARED_LOCK:
        if not _SHARED:
            atexit.register(close_all)
        helper = _SHARED.get(key)
        if helper is None or helper.dead:
            helper = _SHARED[key] = S3IOProcess(endpoint_url, connections)
        return helper


def helpers() -> list[S3IOProcess]:
    """Every helper this process started (for figures: CPU and memory outside the stage's own)."""
    return list(_SHARED.values())


def close_all() -> None:
    with _SHARED_LOCK:
        for helper in _SHARED.values():
            helper.close()
        _SHARED.clear()


# --- the helper ----------------------------------------------------------------------------------


def _serve(endpoint_url: str, connections: int) -> None:
    from botocore.exceptions import ClientError

    from lora_assets.store.blobs import make_s3_client

    client = make_s3_client(endpoint_url, connections)
    source, out = sys.stdin.buffer, sys.stdout.buffer
    lock = threading.Lock()
    _write_frame(out, "ready")

    def answer(message: Any) -> None:
        ident, op, bucket, key, body, if_none_match = message
        try:
            if op == "get":
                value: Any = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            elif op == "put":
                extra = {"IfNoneMatch": if_none_match} if if_none_match else {}
                client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
                value = None
            elif op == "head":
                value = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            else:
                raise ValueError(f"unknown operation {op!r}")
            reply = (ident, True, value)
        except ClientError as exc:
            reply = (ident, False, ("client_error", exc.response, exc.operation_name))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            reply = (ident, False, ("error", type(exc).__name__, " ".join(str(exc).split())[:500]))
        with lock:
            _write_frame(out, reply)

    with ThreadPoolExecutor(connections, thread_name_prefix="s3-io") as pool:
        while True:
            try:
                message = _read_frame(source)
            except EOFError:
                break
            pool.submit(answer, message)


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
