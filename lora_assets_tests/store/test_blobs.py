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
