"""The blob store on a local directory and on a real S3 API (moto server on loopback)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from lora_assets.store.blobs import BlobKeyError, LocalBlobStore, S3BlobStore


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return S3BlobStore(client, bucket, prefix="lora/test")


def test_put_get_list_size_delete(store) -> None:
    store.put_bytes("conversation-files/u/c1/raw.json", b'{"a": 1}')
    store.put_bytes("conversation-files/u/c2/raw.json", b"[]")
    assert store.get_bytes("conversation-files/u/c1/raw.json") == b'{"a": 1}'
    assert store.exists("conversation-files/u/c1/raw.json")
    assert not store.exists("conversation-files/u/c3/raw.json")
    assert store.size("conversation-files/u/c2/raw.json") == 2
    assert store.list("conversation-files/u") == [
        "conversation-files/u/c1/raw.json",
        "conversation-files/u/c2/raw.json",
    ]
    assert store.list("conversation-files/u/") == store.list("conversation-files/u")
    assert store.list("conversation-files/u/c1") == ["conversation-files/u/c1/raw.json"]
    assert store.list("conversation-files/nothing") == []
    store.delete("conversation-files/u/c1/raw.json")
    assert not store.exists("conversation-files/u/c1/raw.json")


def test_streaming_writer_is_all_or_nothing(store) -> None:
    with store.writer("training-files/x/v1/data.jsonl") as fh:
        for i in range(1000):
            fh.write(b'{"i": %d}\n' % i)
    with store.open_read("training-files/x/v1/data.jsonl") as fh:
        assert sum(1 for _ in fh.read().splitlines()) == 1000
    with pytest.raises(RuntimeError):
        with store.writer("training-files/x/v2/data.jsonl") as fh:
            fh.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert not store.exists("training-files/x/v2/data.jsonl")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs/path", "a//b", "a/./b", "a\\b", "bad key/x", ""])
def test_hostile_keys_refused(store, key: str) -> None:
    with pytest.raises(BlobKeyError, match="blob key"):
        store.put_bytes(key, b"x")


def test_url(store) -> None:
    store.put_bytes("a/b.json", b"{}")
    url = store.url("a/b.json")
    assert url.endswith("a/b.json") or "a/b.json?" in url


def test_put_if_absent_never_overwrites(store) -> None:
    assert store.put_if_absent("conversation-files/u/c/raw.json", b"first") is True
    assert store.put_if_absent("conversation-files/u/c/raw.json", b"second") is False
    assert store.get_bytes("conversation-files/u/c/raw.json") == b"first"


def test_bounded_map_keeps_order_bounds_what_is_in_flight_and_hands_back_errors() -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from lora_assets.store.blobs import bounded_map

    running = peak = 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002 * (i % 3))
        with lock:
            running -= 1
        if i == 7:
            raise KeyError(f"item {i}")
        return i * i

    with ThreadPoolExecutor(8) as pool:
        out = list(bounded_map(pool, work, range(40), window=4))
    assert [i for i, _ in out] == list(range(40))
    assert [r for i, r in out if i != 7] == [i * i for i in range(40) if i != 7]
    assert isinstance(out[7][1], KeyError)
    assert peak <= 4
    # in chunks: the same answers in the same order, the window still bounds the calls in flight
    running = peak = 0
    with ThreadPoolExecutor(8) as pool:
        chunked = list(bounded_map(pool, work, range(41), window=12, chunk=4))
    assert [i for i, _ in chunked] == list(range(41))
    assert [r for i, r in chunked if i != 7] == [i * i for i in range(41) if i != 7]
    assert isinstance(chunked[7][1], KeyError)
    assert 1 < peak <= 4  # calls running at once: one per chunk in flight (at most 16 calls: 4 chunks)


def test_small_puts_go_without_expect_continue(s3_bucket: tuple[str, str]) -> None:
    """botocore asks for `Expect: 100-continue` on every PutObject body, which costs a second
    round trip; the store's client drops it below 1 MiB (a streamed file smaller than a part is
    one PutObject) and keeps it for larger bodies."""
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    sent: list[tuple[int, bool]] = []
    store = S3BlobStore(client, bucket)
    # Registered after the store's handler: sees the headers as they go on the wire.
    client.meta.events.register_last(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append((int(request.headers["Content-Length"]), "Expect" in request.headers)))
    with store.writer("a/small.json") as fh:
        fh.write(b"x" * 6000)
    client.put_object(Bucket=bucket, Key="a/large.bin", Body=b"z" * (2 << 20))
    assert sent == [(6000, False), (2 << 20, True)]
    assert store.get_bytes("a/small.json") == b"x" * 6000


def test_s3_writer_streams_parts_while_writing_and_leaves_nothing_on_failure(s3_bucket, monkeypatch) -> None:
    """A file bigger than a part is sent part by part while the block still writes (the parts
    are on their way before it ends), reads back whole; a block that fails leaves no object and
    no open multipart upload; pyarrow's ParquetWriter writes through it."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lora_assets.store import blobs

    monkeypatch.setattr(blobs, "PART_BYTES", 5 << 20)  # S3's smallest part
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    store = S3BlobStore(client, bucket, prefix="stream")
    line = b"x" * 1023 + b"\n"
    with store.writer("big/data.jsonl") as fh:
        for _ in range(12 << 10):  # 12 MiB: two whole parts and a rest
            fh.write(line)
        assert len(fh.parts) == 2  # sent while writing
    assert store.get_bytes("big/data.jsonl") == line * (12 << 10)
    with pytest.raises(RuntimeError):
        with store.writer("big/partial.jsonl") as fh:
            fh.write(line * (6 << 10))
            raise RuntimeError("crash mid-write")
    assert not store.exists("big/partial.jsonl")
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    table = pa.table({"a": list(range(1000))})
    with store.writer("big/t.parquet") as fh, pq.ParquetWriter(fh, table.schema) as pw:
        pw.write_table(table)
    assert pq.read_table(io.BytesIO(store.get_bytes("big/t.parquet"))).equals(table)


@pytest.mark.parametrize("size", [3, 5 << 20, 11 << 20, 23 << 20])
def test_a_writer_with_deferred_head_puts_the_head_first_and_needs_it(store, size: int, monkeypatch) -> None:
    """A document whose header of totals is known only at the end (a training file's JSON) is
    written body first and head last, and reads back head + body. On S3 the body's first part is
    held back and sent with the head as part 1, the later parts while the block writes (numbered
    from 2): bodies of under one part, one part plus a little, two parts and a rest. A block that
    never gives the head leaves nothing (no object, no open multipart upload)."""
    from lora_assets.store import blobs

    monkeypatch.setattr(blobs, "PART_BYTES", 5 << 20)  # S3's smallest part
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with store.writer("docs/a.json", deferred_head=True) as fh:
        for at in range(0, size, 1 << 20):
            fh.write(body[at:at + (1 << 20)])
        if isinstance(store, S3BlobStore):
            assert len(fh.parts) == max(0, size // (5 << 20) - 1)  # sent while writing: all but part 1
        fh.head = b'{"head": 1, "pairs": ['
        assert fh.tell() == size + len(fh.head)
    assert store.get_bytes("docs/a.json") == b'{"head": 1, "pairs": [' + body
    with pytest.raises(ValueError, match="docs/b.json.*head was never given"):
        with store.writer("docs/b.json", deferred_head=True) as fh:
            fh.write(body)
    assert not store.exists("docs/b.json")
    if isinstance(store, S3BlobStore):
        assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


def test_a_missing_blob_is_file_not_found_naming_it(store) -> None:
    """Both stores say the same thing of a key that is not there: FileNotFoundError with the key."""
    for read in (store.get_bytes, store.size):
        with pytest.raises(FileNotFoundError, match="nothing/here.json"):
            read("nothing/here.json")
    assert not store.exists("nothing/here.json")


def test_concurrent_creates_of_one_key_leave_exactly_one_winner(store) -> None:
    """Eight threads race to create the same blob: one is told it created it, and the blob holds
    that one's bytes (the claims and the judge rely on it)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda i: store.put_if_absent("claims/one.json", f"writer {i}".encode()), range(8)))
    assert created.count(True) == 1
    assert store.get_bytes("claims/one.json") == f"writer {created.index(True)}".encode()


def test_small_objects_go_through_obstore_with_the_clients_settings(s3_bucket: tuple[str, str]) -> None:
    """Small objects are sent by obstore (not botocore: its CPU per request is the stages' bound),
    under the store's prefix, to the client's endpoint and with its number of attempts; what one
    client writes the other reads."""
    from botocore.config import Config

    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(retries={"total_max_attempts": 1}))
    sent: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    store = S3BlobStore(client, bucket, prefix="fast")
    store.put_bytes("conversation-files/u/c1/raw.json", b"{}")
    assert store.put_if_absent("conversation-files/u/c1/enriched.json", b"[1]")
    assert store.get_bytes("conversation-files/u/c1/raw.json") == b"{}"
    assert store.size("conversation-files/u/c1/enriched.json") == 3
    assert sent == []  # none of them through boto3
    assert client.get_object(Bucket=bucket, Key="fast/conversation-files/u/c1/raw.json")["Body"].read() == b"{}"
    assert store._obstore().retry_config["max_retries"] == 0
    assert store._obstore().config["endpoint"] == endpoint


def test_an_unreachable_s3_is_one_line_naming_the_blob(s3_bucket: tuple[str, str]) -> None:
    """A failed request (nothing listens at the endpoint) is a BlobIOError that says which blob
    and why in one line, not obstore's multi-line debug dump."""
    import socket

    from botocore.config import Config

    from lora_assets.store.blobs import BlobIOError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          config=Config(retries={"total_max_attempts": 1}))
    store = S3BlobStore(client, s3_bucket[1], prefix="gone")
    for call in (lambda: store.get_bytes("a/raw.json"), lambda: store.put_bytes("a/raw.json", b"{}"),
                 lambda: store.put_if_absent("a/raw.json", b"{}"), lambda: store.exists("a/raw.json")):
        with pytest.raises(BlobIOError) as failed:
            call()
        message = str(failed.value)
        assert message.startswith(f"s3://{s3_bucket[1]}/gone/a/raw.json: ") and "\n" not in message, message
        assert "error sending request" in message, message
