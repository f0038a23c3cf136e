"""`store.run_copies`: the copies a run keeps of the blobs it wrote serve only that run, that
store and that key, hold exactly the stored bytes, and fail soft (the store is read instead)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from lora_assets.store import run_copies
from lora_assets.store.run_copies import RunCopies


def test_a_copy_is_found_by_its_store_and_key_only() -> None:
    copies = RunCopies()
    copies.keep(("s3", "bucket"), "a/conversation.json", b'{"a": 1}')
    copies.keep(("s3", "bucket"), "b/conversation.json", b"")
    assert copies.get(("s3", "bucket"), "a/conversation.json") == b'{"a": 1}'
    assert copies.get(("s3", "bucket"), "b/conversation.json") == b""
    assert copies.get(("s3", "other"), "a/conversation.json") is None
    assert copies.get(("s3", "bucket"), "c/conversation.json") is None
    assert copies.hits == 2
    copies.keep(("s3", "bucket"), "a/conversation.json", b"rewritten")  # the latest write wins
    assert copies.get(("s3", "bucket"), "a/conversation.json") == b"rewritten"
    copies.close()
    assert copies.get(("s3", "bucket"), "a/conversation.json") is None  # closed: read the store
    copies.keep(("s3", "bucket"), "d", b"x")  # and keeping is a no-op, never an error


def test_a_copy_that_cannot_be_written_whole_is_no_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short write (a full disk) leaves no copy, not even the key's earlier one: the reader
    goes to the store, never to a hole of zeros or stale bytes."""
    copies = RunCopies()
    copies.keep("store", "k", b"first")
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real(fd, data[:2], offset))
    copies.keep("store", "k", b"second version")
    copies.keep("store", "other", b"never whole")
    monkeypatch.setattr(os, "pwrite", real)
    assert copies.get("store", "k") is None and copies.get("store", "other") is None
    copies.keep("store", "k", b"third")
    assert copies.get("store", "k") == b"third"
    copies.close()


def test_copies_kept_by_many_threads_are_each_intact() -> None:
    copies = RunCopies()
    blobs = {f"k{i}": bytes([i % 251]) * (i * 37 % 5000) for i in range(400)}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: copies.keep("store", *kv), blobs.items()))
    assert len(copies) == 400
    assert all(copies.get("store", k) == v for k, v in blobs.items())
    copies.close()


def test_a_run_finds_only_its_own_copies_and_old_runs_are_dropped() -> None:
    first = run_copies.for_run("run-1")
    first.keep("store", "k", b"one")
    assert run_copies.for_run("run-1") is first
    assert run_copies.of_run("run-2") is None
    later = [run_copies.for_run(f"run-{i}") for i in range(2, 2 + run_copies.KEPT_RUNS)]
    assert run_copies.of_run("run-1") is None  # the oldest, dropped beyond KEPT_RUNS
    assert first.get("store", "k") is None
    for i, copies in enumerate(later, start=2):
        assert run_copies.of_run(f"run-{i}") is copies
        run_copies.release(f"run-{i}")
        assert run_copies.of_run(f"run-{i}") is None
    run_copies.release("never-made")  # releasing nothing is fine
