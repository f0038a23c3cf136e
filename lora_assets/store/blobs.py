"""Blob store: one interface over a local directory (default) and S3 (production)."""

from __future__ import annotations

import gc
import os
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")


class BlobKeyError(ValueError):
    """A blob key that could escape its store (`..`, absolute, odd characters)."""


def check_key(key: str) -> str:
    """Return `key` if every segment is safe, else raise BlobKeyError naming the problem."""
    if not key or key.startswith("/") or "\\" in key:
        raise BlobKeyError(f"blob key {key!r}: must be a relative path with '/' separators")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not _SAFE_SEGMENT.match(segment):
            raise BlobKeyError(f"blob key {key!r}: unsafe segment {segment!r}")
    return key


class BlobIOError(OSError):
    """A blob could not be read or written (S3 unreachable, refused, timed out): names the blob
    and the reason in one line."""


class BlobStore(Protocol):
    """What stages need from storage. Keys are '/'-separated relative paths."""

    location: str

    def put_bytes(self, key: str, data: bytes) -> str: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def writer(self, key: str, deferred_head: bool = False) -> Any: ...
    def url(self, key: str, expires_in: int = 3600) -> str: ...


class LocalBlobStore:
    """Blobs as files under `root`. Writes are atomic (temp file + rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        with self.writer(key) as fh:
            fh.write(data)
        return key

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists, atomically (hard link of a complete temp
        file: never a partial blob, never an overwrite). True if this call created it."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/")
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def open_read(self, key: str) -> IO[bytes]:
        return self._path(key).open("rb")

    @contextmanager
    def writer(self, key: str, deferred_head: bool = False) -> Iterator[IO[bytes]]:
        """Stream bytes into `key`; the blob appears only if the block completes. With
        `deferred_head` the blob starts with a head known only at the end: set the handle's `head`
        before the block ends (the body waits in a temp file, then follows it)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                if not deferred_head:
                    yield fh
                else:
                    with tempfile.TemporaryFile(prefix="lora-body-") as spool:
                        body = _HeadLater(spool, key)
                        yield body  # type: ignore[misc] - the write surface of a binary file
                        fh.write(body.head_bytes())
                        spool.seek(0)
                        shutil.copyfileobj(spool, fh, 1 << 20)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def url(self, key: str, expires_in: int = 3600) -> str:
        return str(self._path(key))


class _HeadLater:
    """The body of a local blob whose head comes last (`LocalBlobStore.writer(deferred_head=True)`)."""

    def __init__(self, spool: IO[bytes], key: str) -> None:
        self.spool, self.key = spool, key
        self.written = 0
        self.head: bytes | None = None

    def write(self, data: bytes) -> int:
        self.spool.write(data)
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written + len(self.head or b"")

    def head_bytes(self) -> bytes:
        return _given_head(self.head, self.key)


def _given_head(head: bytes | None, key: str) -> bytes:
    """The head a writer with `deferred_head` was given, or ValueError naming the blob."""
    if head is None:
        raise ValueError(f"blob {key!r}: its head was never given (a writer with deferred_head)")
    return head


#: PUTs up to this size go without `Expect: 100-continue` (botocore adds it to every file-like
#: body): it costs a second round trip, and a small body is cheaper to resend than to wait for.
EXPECT_CONTINUE_MIN_BYTES = 1 << 20


def _no_expect_for_small_bodies(request: Any, **_: Any) -> None:
    length = request.headers.get("Content-Length")
    if "Expect" in request.headers and length is not None and int(length) < EXPECT_CONTINUE_MIN_BYTES:
        del request.headers["Expect"]


#: Part size of the streamed multipart uploads (S3 wants ≥ 5 MiB for every part but the last).
PART_BYTES = 8 << 20
#: Parts in flight at once, for all the files a store streams (each is read from its spool when
#: it is sent: this many parts in memory at most).
UPLOAD_THREADS = 4


class _StreamedUpload:
    """The multipart upload of a spool file that is still being written: every whole part is sent
    as soon as it is on disk, by the store's upload threads, while the writer goes on (a
    training-file build computes its next members meanwhile). A part is read from the spool when
    it is sent, so `UPLOAD_THREADS` parts at most are in memory whatever the file's size and
    however many files are open. The upload is created by an upload thread too, with the first
    part (the writer does not wait for its round trip). Files smaller than one part are sent with
    one PUT when they are closed.

    With `deferred_head` the object starts with a head the writer knows only at the end (a
    document's header of totals): the body's first `PART_BYTES` are held back, the parts after
    them sent as they come (numbered from 2), and part 1 (the head and those bytes) when the head
    is given (`head`, before `finish`)."""

    def __init__(self, store: S3BlobStore, s3_key: str, spool: IO[bytes], deferred_head: bool = False) -> None:
        self.store, self.s3_key, self.spool = store, s3_key, spool
        self.written = 0
        self.deferred_head = deferred_head
        self.head: bytes | None = None
        self._held = PART_BYTES if deferred_head else 0  # body bytes that go out with the head
        self.sent = self._held  # bytes of the body handed to the upload threads (whole parts)
        self._created: Future[str] | None = None  # the upload id
        self.parts: list[Future[dict[str, Any]]] = []

    def write(self, data: bytes) -> int:
        self.spool.write(data)
        self.written += len(data)
        if self.written - self.sent >= PART_BYTES:
            self.spool.flush()  # the upload thread reads the file, not this buffer
            while self.written - self.sent >= PART_BYTES:
                self._send(self.sent, PART_BYTES)
        return len(data)

    def _create(self) -> str:
        return str(self.store.client.create_multipart_upload(Bucket=self.store.bucket, Key=self.s3_key)["UploadId"])

    def _send(self, offset: int, size: int, number: int | None = None, prefix: bytes = b"") -> None:
        if self._created is None:
            # Queued before any part of this file, so a part waiting for it never holds the
            # thread it needs.
            self._created = self.store._uploads().submit(self._create)
        if number is None:
            number = len(self.parts) + (2 if self.deferred_head else 1)
        self.parts.append(self.store._uploads().submit(self._part, number, offset, size, prefix))
        if offset >= self._held:
            self.sent = max(self.sent, offset + size)

    def _part(self, number: int, offset: int, size: int, prefix: bytes) -> dict[str, Any]:
        assert self._created is not None
        upload_id = self._created.result()
        body = prefix + os.pread(self.spool.fileno(), size, offset)
        answer = self.store.client.upload_part(Bucket=self.store.bucket, Key=self.s3_key, UploadId=upload_id,
                                               PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _head(self) -> bytes:
        return _given_head(self.head, self.s3_key) if self.deferred_head else b""

    def tell(self) -> int:
        return self.written + len(self.head or b"")

    def finish(self) -> None:
        """Send the rest and make the object appear (it does only now)."""
        self.spool.flush()
        head = self._head()
        if self._created is None:
            self.spool.seek(0)
            self.store.client.put_object(Bucket=self.store.bucket, Key=self.s3_key, Body=head + self.spool.read())
            return
        if self.written > self.sent:
            self._send(self.sent, self.written - self.sent)
        if self.deferred_head:
            self._send(0, self._held, number=1, prefix=head)
        parts = sorted((f.result() for f in self.parts), key=lambda p: p["PartNumber"])
        self.store.client.complete_multipart_upload(Bucket=self.store.bucket, Key=self.s3_key,
                                                    UploadId=self._created.result(), MultipartUpload={"Parts": parts})

    def abort(self) -> None:
        """Nothing appears: the parts already sent are dropped."""
        for f in self.parts:
            f.cancel()
        wait(self.parts)
        if self._created is not None:
            try:
                upload_id = self._created.result()
            except Exception:  # noqa: BLE001 - no upload was created: nothing to drop
                return
            self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.s3_key, UploadId=upload_id)

    # The file-object surface writers use (json.dump, pyarrow's ParquetWriter, shutil).
    def flush(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    # io.TextIOWrapper (the review CSV export) asks these too.
    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


def make_s3_client(endpoint_url: str, connections: int) -> Any:
    """A boto3 S3 client with a connection pool of `connections` (botocore's default of 10 would
    make every call past the tenth open and drop a connection).

    A stage sends a few requests per conversation, so botocore's own CPU per request counts: our
    parameters are not validated again, and request/response checksums are computed only where S3
    requires them (botocore ≥ 1.36 adds a CRC32 to every PUT and checks one on every GET; TCP and
    TLS already protect the bytes in transit)."""
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=connections, retries={"max_attempts": 5, "mode": "standard"},
                    parameter_validation=False, request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


def make_object_store(client: Any, bucket: str, prefix: str = "") -> Any:
    """An obstore `S3Store` for `bucket`/`prefix` configured like the boto3 `client`: its endpoint,
    region, timeouts and number of attempts, and credentials from boto3's default chain (env,
    profile, instance role: what `make_s3_client` and dagster-aws's S3Resource use), refreshed
    by obstore. None when that chain has no credentials (the boto3 client then does everything).

    Why a second client: a stage sends ~5 small-object requests per conversation, and botocore
    spends ≈ 1–2.5 ms of CPU on each under the GIL (measured beside obstore's ≈ 0.4 ms in
    `bench/bench_scale.py`), more than the whole per-conversation budget. obstore (Rust
    object_store) signs and sends them with the GIL released."""
    from datetime import timedelta

    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    session = boto3.session.Session()
    if session.get_credentials() is None:
        return None
    meta = client.meta
    retries = meta.config.retries or {}
    attempts = int(retries.get("total_max_attempts") or 3)  # botocore's standard mode: 3 in all
    endpoint = meta.endpoint_url or None  # boto3 fills in AWS's own when none was configured
    options: dict[str, Any] = {
        "timeout": timedelta(seconds=float(meta.config.read_timeout or 60) + float(meta.config.connect_timeout or 60)),
        "connect_timeout": timedelta(seconds=float(meta.config.connect_timeout or 60)),
        "pool_max_idle_per_host": str(meta.config.max_pool_connections or 10),
    }
    if endpoint and endpoint.startswith("http://"):
        options["allow_http"] = True
    kwargs: dict[str, Any] = {"region": meta.region_name or "us-east-1"}
    if endpoint:
        kwargs.update(endpoint=endpoint, virtual_hosted_style_request=False)
    return S3Store(bucket, prefix=prefix or None, client_options=options,
                   retry_config={"max_retries": max(attempts - 1, 0),
                                 "backoff": {"init_backoff": timedelta(milliseconds=50),
                                             "max_backoff": timedelta(seconds=20), "base": 2.0},
                                 "retry_timeout": timedelta(minutes=3)},
                   credential_provider=Boto3CredentialProvider(session), **kwargs)


_OBJECT_STORES: dict[tuple[Any, ...], Any] = {}
_OBJECT_STORES_LOCK = threading.Lock()


class S3BlobStore:
    """Blobs in an S3 bucket under a prefix. Small objects (a conversation's JSON: read, written,
    created-if-absent, asked about) go through obstore (`make_object_store`); streamed multipart
    uploads, big reads, listings, deletes and presigned links through the boto3 `client`
    (dagster-aws's S3Resource builds the same client in the Dagster layer)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._upload_pool: ThreadPoolExecutor | None = None
        self._upload_pool_lock = threading.Lock()  # files are completed from several threads at once
        self._objects: tuple[int, Any] | None = None  # (pid, S3Store): obstore's runtime is per process
        client.meta.events.register("before-send.s3.PutObject", _no_expect_for_small_bodies,
                                    unique_id="lora-no-expect-small-put")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _obstore(self) -> Any:
        """This process's obstore client for the bucket (built on first use: a forked process
        builds its own), or None when there are no credentials for it."""
        pid = os.getpid()
        if self._objects is None or self._objects[0] != pid:
            meta = self.client.meta
            shared = (pid, meta.endpoint_url, meta.region_name, repr(meta.config.retries),
                      meta.config.max_pool_connections, self.bucket, self.prefix)
            # One per bucket, endpoint and settings in a process: stores made stage after stage
            # share its connections. Locked: a stage's 32 pool threads ask at once.
            with _OBJECT_STORES_LOCK:
                if shared not in _OBJECT_STORES:
                    _OBJECT_STORES[shared] = make_object_store(self.client, self.bucket, self.prefix)
            self._objects = (pid, _OBJECT_STORES[shared])
        return self._objects[1]

    def _missing(self, key: str) -> FileNotFoundError:
        return FileNotFoundError(f"{self.location}/{key}: no such blob")

    @contextmanager
    def _named(self, key: str) -> Iterator[None]:
        """obstore's failures as one line naming the blob (its own message ends in a multi-line
        debug dump); a missing blob as FileNotFoundError, as on local disk. The original stays
        chained."""
        from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError, PreconditionError

        try:
            yield
        except NotFoundError:
            raise self._missing(key) from None
        except (AlreadyExistsError, PreconditionError):
            raise
        except BaseError as exc:
            reason = str(exc).split("\n", 1)[0].strip()
            raise BlobIOError(f"{self.location}/{key}: {reason}") from exc

    def _put(self, key: str, data: bytes, create: bool = False) -> None:
        objects = self._obstore()
        if objects is not None:
            import obstore

            with self._named(key):
                obstore.put(objects, check_key(key), data, mode="create" if create else "overwrite",
                            use_multipart=False)
        elif create:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        else:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _head(self, key: str) -> int:
        objects = self._obstore()
        if objects is None:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        import obstore

        with self._named(key):
            return int(obstore.head(objects, check_key(key))["size"])

    def put_bytes(self, key: str, data: bytes) -> str:
        self._put(key, data)
        return key

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` unless it exists (S3 conditional write, If-None-Match: *). True if created."""
        from botocore.exceptions import ClientError
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            self._put(key, data, create=True)
            return True
        except (AlreadyExistsError, PreconditionError):
            return False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def get_bytes(self, key: str) -> bytes:
        objects = self._obstore()
        if objects is None:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        import obstore

        with self._named(key):
            return bytes(obstore.get(objects, check_key(key)).bytes())

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._head(key)
            return True
        except FileNotFoundError:
            return False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def size(self, key: str) -> int:
        return self._head(key)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/")
        full = self._key(prefix) + "/" if prefix else self.prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def open_read(self, key: str) -> IO[bytes]:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    @contextmanager
    def writer(self, key: str, deferred_head: bool = False) -> Iterator[IO[bytes]]:
        """Stream bytes into `key` through a spool file, uploaded part by part while the block
        still writes (`_StreamedUpload`); the object appears only if the block completes. With
        `deferred_head`, set the handle's `head` (the object's first bytes) before the block ends."""
        upload = _StreamedUpload(self, self._key(key), tempfile.TemporaryFile(prefix="lora-upload-"), deferred_head)
        try:
            yield upload  # type: ignore[misc] - the write surface of a binary file
            upload.finish()
        except BaseException:
            upload.abort()
            raise
        finally:
            upload.spool.close()

    def _uploads(self) -> ThreadPoolExecutor:
        # A few threads for every file: a part's round trip and the server's work on 8 MB overlap
        # with the next parts' (one at a time, a build's 500 MB of outputs went after its last
        # member, part after part), and at most UPLOAD_THREADS parts are in memory.
        with self._upload_pool_lock:
            if self._upload_pool is None:
                self._upload_pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="s3-parts")
            return self._upload_pool

    def url(self, key: str, expires_in: int = 3600) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_in
        )


T = TypeVar("T")
R = TypeVar("R")

#: Reads a stage hands to one pool task (`bounded_map`'s `chunk`): a stage reads a partition's
#: conversations in order, and a task per read cost its main thread a submit and a future each.
READ_CHUNK = 4
#: Writes a stage hands to one pool task, for the same reason: a partition's stage writes one or
#: two blobs per conversation, and each write was a submit, a future and a worker wake-up.
WRITE_CHUNK = 4


def bounded_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int,
                chunk: int = 1) -> Iterator[tuple[T, R | BaseException]]:
    """`fn` over `items` on `pool`, at most `window` calls in flight, results in input order as
    (item, result or the exception it raised). Lazy on both ends: a stage streams a whole
    partition through it without holding more than `window` results.

    With `chunk` > 1 a task makes `chunk` calls one after the other: one submit, one future and
    one worker wake-up per chunk instead of per call (measured at ≈ 0.08 ms of the caller's CPU per
    call). `window` still counts calls: with a pool of P threads, a window of at least P × chunk
    keeps every thread busy."""
    if chunk <= 1:
        pending: deque[tuple[T, Future[R]]] = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                yield _settle(*pending.popleft())
        while pending:
            yield _settle(*pending.popleft())
        return

    def calls(group: list[T]) -> list[R | BaseException]:
        out: list[R | BaseException] = []
        for item in group:
            try:
                out.append(fn(item))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, per item
                out.append(exc)
        return out

    groups: deque[tuple[list[T], Future[list[R | BaseException]]]] = deque()
    in_flight = 0
    for group in batched(items, chunk):
        groups.append((group, pool.submit(calls, group)))
        in_flight += len(group)
        while in_flight > window:
            group, future = groups.popleft()
            in_flight -= len(group)
            yield from zip(group, future.result(), strict=True)
    while groups:
        group, future = groups.popleft()
        yield from zip(group, future.result(), strict=True)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects the process holds now out of the garbage collections run inside (a
    partition-scale stage's). A full collection walks every object, most of them the imports
    (~160,000 in a stage process) that a stage never frees: ~0.1 s each, a few per 2,000
    conversations. `gc.freeze` parks them in a generation no collection visits."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc `malloc_trim`; a no-op elsewhere). Blob
    bytes are allocated on the pool's threads, in per-thread malloc arenas that otherwise keep
    every page they ever held: a stage that streams a partition calls this once per chunk so its
    resident memory stays flat however many conversations pass through."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last may be shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _settle(item: T, future: Future[R]) -> tuple[T, R | BaseException]:
    try:
        return item, future.result()
    except Exception as exc:  # noqa: BLE001 - handed to the caller, per item
        return item, exc


def copy_blob(src: BlobStore, key: str, dest: Path) -> Path:
    """Copy one blob to a local file (used by `training-file download`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src.open_read(key) as fh, dest.open("wb") as out:
        shutil.copyfileobj(fh, out)
    return dest
