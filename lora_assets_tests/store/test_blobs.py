"""The blob store on a local directory and on a real S3 API (moto server on loopback)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from lora_assets.store import s3_io
from lora_assets.store.blobs import BlobKeyError, LocalBlobStore, S3BlobStore


@pytest.fixture(params=["local", "s3", "s3-helper-process"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    # The same store with its small-object requests made by a helper process (`store.s3_io`).
    io = s3_io.shared(endpoint, 4) if request.param == "s3-helper-process" else None
    return S3BlobStore(client, bucket, prefix="lora/test", io=io)


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


def test_small_puts_go_without_expect_continue(s3_bucket: tuple[str, str]) -> None:
    """botocore asks for `Expect: 100-continue` on every PutObject body, which costs a second
    round trip; our store drops it below 1 MiB and keeps it for larger bodies."""
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    sent: list[tuple[int, bool]] = []
    store = S3BlobStore(client, bucket)
    # Registered after the store's handler: sees the headers as they go on the wire.
    client.meta.events.register_last(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append((int(request.headers["Content-Length"]), "Expect" in request.headers)))
    store.put_bytes("a/small.json", b"x" * 6000)
    store.put_if_absent("a/small2.json", b"y" * 100)
    store.put_bytes("a/large.bin", b"z" * (2 << 20))
    assert sent == [(6000, False), (100, False), (2 << 20, True)]
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


def test_a_helper_process_that_dies_leaves_the_store_working(s3_bucket: tuple[str, str]) -> None:
    """The helper making a store's small requests is killed: the calls it took are made again
    with the store's own client, and so are the next ones; a missing key is still a ClientError
    with S3's code, through the helper or not."""
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import ClientError

    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    helper = s3_io.S3IOProcess(endpoint, 4)
    try:
        store = S3BlobStore(client, bucket, prefix="helper", io=helper)
        with pytest.raises(ClientError) as missing:
            store.get_bytes("nothing/here.json")
        assert missing.value.response["Error"]["Code"] == "NoSuchKey"
        keys = [f"conversation-files/u/c{i}/raw.json" for i in range(60)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: store.put_bytes(k, k.encode()), keys[:30]))
            helper._proc.kill()
            list(pool.map(lambda k: store.put_bytes(k, k.encode()), keys[30:]))
            assert list(pool.map(store.get_bytes, keys)) == [k.encode() for k in keys]
        assert helper.dead and "exited" in helper.dead
        assert store.size(keys[0]) == len(keys[0]) and not store.exists("nothing/here.json")
    finally:
        helper.close()
