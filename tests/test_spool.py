"""The spool file: bounds, fsync policies, checkpointed replay, crash repair, truncation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.spool import Spool, SpoolFull


async def replay_all(spool: Spool) -> list[bytes]:
    seen: list[bytes] = []
    async for lines in spool.replay_batches():
        seen.extend(lines)
        await spool.commit()
    return seen


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_append_then_replay_in_order(tmp_path: Path, fsync: str) -> None:
    spool = Spool(tmp_path / "spool.ndjson", max_bytes=1 << 20, fsync=fsync)  # type: ignore[arg-type]
    lines = [f'{{"id":"e{i}"}}'.encode() for i in range(600)]
    await spool.append(lines[:300])
    await spool.append(lines[300:])
    assert spool.pending_bytes() == sum(len(line) + 1 for line in lines)
    assert spool.pending_lines == 600
    assert Spool(tmp_path / "spool.ndjson", max_bytes=1 << 20, fsync="never").pending_lines == 600
    assert await replay_all(spool) == lines
    assert spool.pending_lines == 0
    assert spool.pending_bytes() == 0
    assert await spool.truncate_if_replayed()
    assert spool.size_bytes == 0
    assert (tmp_path / "spool.ndjson").read_bytes() == b""


async def test_full_spool_rejects_and_keeps_data(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=100, fsync="always")
    await spool.append([b"x" * 60])
    with pytest.raises(SpoolFull, match="ORCH_SPOOL_MAX_BYTES"):
        await spool.append([b"y" * 60])
    assert (tmp_path / "s").read_bytes() == b"x" * 60 + b"\n"


async def test_replay_resumes_from_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "s"
    spool = Spool(path, max_bytes=1 << 20, fsync="never")
    lines = [f"line-{i}".encode() for i in range(1000)]
    await spool.append(lines)
    batches = spool.replay_batches()
    first = await anext(batches)
    await spool.commit()
    await batches.aclose()  # the daemon died here
    resumed = Spool(path, max_bytes=1 << 20, fsync="never")
    assert await replay_all(resumed) == lines[len(first) :]


async def test_uncommitted_batch_is_replayed_again(tmp_path: Path) -> None:
    path = tmp_path / "s"
    spool = Spool(path, max_bytes=1 << 20, fsync="never")
    await spool.append([b"a", b"b"])
    batches = spool.replay_batches()
    await anext(batches)
    await batches.aclose()  # applied but not committed: replayed again, which dedup makes harmless
    assert await replay_all(Spool(path, max_bytes=1 << 20, fsync="never")) == [b"a", b"b"]


async def test_truncate_waits_for_lines_appended_during_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, fsync="never")
    await spool.append([b"first"])
    async for _ in spool.replay_batches():
        await spool.commit()
        await spool.append([b"late"])
        break
    assert await spool.truncate_if_replayed() is False
    assert await replay_all(spool) == [b"late"]
    assert await spool.truncate_if_replayed() is True


def test_crash_cut_last_line_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b'{"id":"a"}\n{"id":"b"}\n{"id":"c')
    spool = Spool(path, max_bytes=1 << 20, fsync="always")
    assert path.read_bytes() == b'{"id":"a"}\n{"id":"b"}\n'
    assert spool.size_bytes == len(b'{"id":"a"}\n{"id":"b"}\n')


async def test_unreadable_checkpoint_replays_from_start(tmp_path: Path) -> None:
    path = tmp_path / "s"
    spool = Spool(path, max_bytes=1 << 20, fsync="never")
    await spool.append([b"a", b"b"])
    (tmp_path / "s.offset").write_text("garbage")
    assert await replay_all(spool) == [b"a", b"b"]


async def test_spool_file_is_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, fsync="always")
    await spool.append([b"a"])
    assert os.stat(tmp_path / "s").st_mode & 0o777 == 0o600
