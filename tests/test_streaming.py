"""Streaming Parquet reader: each row exactly once per epoch across processes x workers."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtlframe.errors import ArgumentError, DataError
from mtlframe.streaming import ParquetStream, reader_range, worker_skips
from mtlframe.testing import run_process_group

# 3 files (fewer than the 4 readers of 2 processes x 2 workers), row groups of uneven sizes:
# file rows 37 (groups of 10), 5 (one group), 61 (groups of 16) -> 103 rows, 9 row groups
SIZES = [(37, 10), (5, 5), (61, 16)]
N = sum(n for n, _ in SIZES)


@pytest.fixture
def data_dir(tmp_path):
    start = 0
    for i, (n, group) in enumerate(SIZES):
        ids = np.arange(start, start + n, dtype=np.int64)
        table = pa.table({"id": ids, "x": ids.astype(np.float32) / 2, "label": (ids % 2).astype(np.int8),
                          "name": [f"r{j}" for j in ids]})
        pq.write_table(table, tmp_path / f"part-{i}.parquet", row_group_size=group)
        start += n
    return tmp_path


def _epoch_ids(data_dir, world_size=2, workers=2, epoch=0, **kw):
    """ids read by each reader (rank, worker) at ``epoch``, in the order read; batches checked."""
    out = {}
    for rank in range(world_size):
        ds = ParquetStream(data_dir, batch_size=8, rank=rank, world_size=world_size, **kw)
        ds.set_epoch(epoch)
        for w in range(workers):
            ids = []
            for b in ds.iter_reader(w, workers):
                assert set(b) == {"id", "x", "label", "name"}
                assert b["id"].dtype == torch.int64 and len(b["id"]) <= 8
                # the columns of one batch stay aligned row by row through the shuffle
                assert torch.equal(b["x"], b["id"].float() / 2)
                assert list(b["name"]) == [f"r{j}" for j in b["id"].tolist()]
                ids += b["id"].tolist()
            out[rank, w] = ids
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_processes_two_workers_read_every_row_exactly_once(data_dir, shuffle):
    for epoch in (0, 1):
        seen = _epoch_ids(data_dir, epoch=epoch, shuffle=shuffle, buffer_rows=12)
        everything = sorted(i for ids in seen.values() for i in ids)
        assert everything == list(range(N))
        # 103 rows over 4 readers: 26, 26, 26, 25
        assert [len(seen[k]) for k in sorted(seen)] == [26, 26, 26, 25]


def test_epochs_differ_in_order_and_are_reproducible(data_dir):
    e0 = _epoch_ids(data_dir, epoch=0, shuffle=True, buffer_rows=12)
    e1 = _epoch_ids(data_dir, epoch=1, shuffle=True, buffer_rows=12)
    again = _epoch_ids(data_dir, epoch=0, shuffle=True, buffer_rows=12)
    assert e0 == again
    assert all(e0[k] != e1[k] for k in e0)
    # the buffer mixes rows inside a reader: not the sorted order of its pieces
    assert any(ids != sorted(ids) for ids in e0.values())
    plain = _epoch_ids(data_dir, epoch=0, shuffle=False)
    assert plain == _epoch_ids(data_dir, epoch=1, shuffle=False)
    assert plain[0, 0] == list(range(26)) and plain[1, 1] == list(range(78, 103))


def test_drop_uneven_gives_every_process_the_same_number_of_batches(data_dir):
    # 103 rows, 4 readers: each reads 103 // 4 = 25 rows -> 4 batches of 8 (8, 8, 8, 1); 3 rows left out
    for epoch in (0, 1):
        seen = _epoch_ids(data_dir, epoch=epoch, shuffle=True, buffer_rows=12, drop_uneven=True)
        assert [len(v) for v in seen.values()] == [25] * 4
        ids = [i for v in seen.values() for i in v]
        assert len(set(ids)) == 100
    for rank in range(2):
        ds = ParquetStream(data_dir, batch_size=8, rank=rank, world_size=2, drop_uneven=True)
        assert ds.batches_per_epoch(num_workers=2) == 8
    # without dropping, the shares are 26 + 26 rows (rank 0) and 26 + 25 rows (rank 1): at batch 25
    # rank 0 runs 2 + 2 = 4 steps and rank 1 2 + 1 = 3 (DDP would hang); dropping gives 2 and 2
    assert ParquetStream(data_dir, batch_size=25, rank=0, world_size=2).batches_per_epoch(2) == 4
    assert ParquetStream(data_dir, batch_size=25, rank=1, world_size=2).batches_per_epoch(2) == 3
    for rank in range(2):
        ds = ParquetStream(data_dir, batch_size=25, rank=rank, world_size=2, drop_uneven=True)
        assert ds.batches_per_epoch(2) == 2
        assert sum(1 for w in range(2) for _ in ds.iter_reader(w, 2)) == 2


def test_rows_held_are_bounded_by_the_buffer_and_one_row_group(data_dir):
    # largest row group: 16 rows; buffer 12, batch 4 -> at most 12 + 3 + 16 = 31 rows held, of 103
    ds = ParquetStream(data_dir, batch_size=4, shuffle=True, buffer_rows=12)
    assert sum(len(b["id"]) for b in ds) == N
    assert 16 < ds.peak_rows <= 31
    # no buffer: at most a batch (less one row) plus a row group
    ds = ParquetStream(data_dir, batch_size=4, shuffle=True, buffer_rows=0)
    assert sum(len(b["id"]) for b in ds) == N
    assert ds.peak_rows <= 3 + 16


def test_length_is_known_when_the_worker_count_is(data_dir):
    ds = ParquetStream(data_dir, columns=["id"], batch_size=8, rank=1, world_size=2, num_workers=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert len(ds) == len(loader) == 8 == len(list(loader))      # 26 + 25 rows -> 4 + 4 batches
    with pytest.raises(TypeError, match="only when built with num_workers"):
        len(ParquetStream(data_dir))
    with pytest.raises(ArgumentError, match="built for num_workers=2 but is read by 1 DataLoader worker"):
        list(ds)


def test_reader_ranges_cover_the_rows_once():
    for total in (0, 1, 7, 103):
        for readers in (1, 3, 4, 8):
            ranges = [reader_range(total, r, readers, False) for r in range(readers)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(h - lo for lo, h in ranges) - min(h - lo for lo, h in ranges) <= 1


def test_real_dataloader_workers_see_the_epoch(data_dir):
    # 2 ranks x 2 real data-loader worker processes (persistent: the epoch reaches them through
    # shared memory), 2 epochs: every row once per epoch, and the epochs' orders differ
    loaders = []
    for rank in range(2):
        ds = ParquetStream(data_dir, columns=["id", "label"], batch_size=8, shuffle=True, buffer_rows=12,
                           rank=rank, world_size=2)
        loaders.append((ds, torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                                        persistent_workers=True)))
    orders = []
    for epoch in (0, 1):
        ids = []
        for ds, loader in loaders:
            ds.set_epoch(epoch)
            batches = list(loader)
            assert all(set(b) == {"id", "label"} for b in batches)
            assert len(batches) == ds.batches_per_epoch(num_workers=2) == 8   # 26+26 | 26+25 rows
            ids += [i for b in batches for i in b["id"].tolist()]
        assert sorted(ids) == list(range(N))
        orders.append(ids)
    assert orders[0] != orders[1]


@pytest.mark.skipif(sys.platform != "linux", reason="DDP on CPU tested on Linux")
def test_two_gloo_processes_with_two_workers_each(data_dir, tmp_path):
    # real processes: each training batch all-reduces (a DDP step), so unequal step counts would hang
    # (the timeout turns that into a failure); 103 rows, 4 readers of 25 rows -> 1 batch of 25 each
    here = Path(__file__).resolve().parent
    out = tmp_path / "ids.json"
    env = {**os.environ, "PYTHONPATH": str(here.parent), "OMP_NUM_THREADS": "1"}
    # its own process group: a hung rank (unequal steps under DDP) is killed with it and fails the test
    run_process_group([sys.executable, str(here / "stream_ddp_run.py"), str(data_dir), str(out)], timeout=120,
                      env=env)
    got = json.loads(out.read_text())
    assert got["steps"] == [[2, 2], [2, 2]]
    for ids in got["train"]:
        assert len(ids) == len(set(ids)) == 100 and set(ids) <= set(range(N))
    assert got["train"][0] != got["train"][1]
    assert sorted(got["eval"]) == list(range(N))


def test_worker_skips_follow_the_dataloaders_turns():
    assert worker_skips([6, 6, 6, 5], 3) == ([1, 1, 1, 0], 3)
    assert worker_skips([6, 6, 6, 5], 21) == ([6, 5, 5, 5], 1)      # 5 full turns, then worker 0
    assert worker_skips([2, 1], 3) == ([2, 1], 1)                   # worker 1 is passed over once empty
    assert worker_skips([2, 1], 9) == ([2, 1], 1)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_resume_leaves_out_the_batches_already_trained(data_dir):
    # one process, 4 real workers of 26, 26, 26, 25 rows at batch 5: 6, 6, 6, 5 batches (23), which
    # the DataLoader takes in turn; resuming after k batches yields exactly the rest of the epoch
    ds = ParquetStream(data_dir, columns=["id"], batch_size=5, shuffle=True, buffer_rows=12)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=4)
    ds.set_epoch(3)
    full = [b["id"].tolist() for b in loader]
    assert len(full) == ds.batches_per_epoch(4) == 23
    for k in (0, 3, 21, 23):
        ds.resume_at(3, k)
        assert [b["id"].tolist() for b in loader] == full[k:]
    ds.set_epoch(3)                      # set_epoch starts the epoch from its first batch again
    assert [b["id"].tolist() for b in loader] == full


def test_errors_name_the_folder_file_and_column(tmp_path, data_dir):
    with pytest.raises(DataError, match="missing: does not exist; give a folder of Parquet files"):
        ParquetStream(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no \*.parquet file in this folder"):
        ParquetStream(empty)
    with pytest.raises(DataError, match=r"part-0.parquet: column 'clicks' is missing"):
        ParquetStream(data_dir, columns=["id", "clicks"])
    (data_dir / "part-9.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"part-9.parquet: cannot read it as Parquet"):
        ParquetStream(data_dir)
    holes = tmp_path / "holes"
    holes.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, None, 3], pa.int64()), "x": [0.5, None, 1.0]}),
                   holes / "a.parquet")
    assert ParquetStream(holes, columns=["x"]).total_rows == 3      # float NaN stays a missing value
    assert np.isnan(next(iter(ParquetStream(holes, columns=["x"])))["x"][1])
    with pytest.raises(DataError, match=r"a.parquet: column 'id' \(int64\) has 1 missing value\(s\) in row group 0"):
        list(ParquetStream(holes))
    with pytest.raises(ArgumentError, match="rank must be in \\[0, world_size=2\\), got 2"):
        ParquetStream(data_dir, rank=2, world_size=2)
    with pytest.raises(ArgumentError, match="batch_size must be at least 1"):
        ParquetStream(data_dir, batch_size=0)
