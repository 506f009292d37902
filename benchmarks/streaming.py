"""Streaming Parquet benchmark: data-pass rate and peak memory of :class:`ParquetStream` vs the
in-memory :class:`ColumnBatches` on the same rows.

The rows are the ones of ``benchmarks.scale`` (20 int32 ids, 10 float32 numerics, 3 int8 labels:
132 bytes a row raw), written once to ``--dir`` as ``--files`` Parquet files with row groups of
``--row-group`` rows (generated and written in chunks, so writing is bounded in memory too). Each
mode runs in its own process so that its peak RSS (``VmHWM``) is its own::

    nice -n 10 python -m benchmarks.streaming --rows 2000000 --dir /tmp/stream2m

prints one JSON line per mode: rows read in one shuffled epoch, rows/s, peak RSS in MB, and the
raw size of the rows in MB. ``memory`` loads every file into tensors first (what the data module
does today); ``stream`` reads with a 64K-row shuffle buffer.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MB = 1 << 20
ROW_BYTES = 20 * 4 + 10 * 4 + 3


def write(root: Path, rows: int, files: int, row_group: int, seed: int = 2026) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    if len(list(root.glob("*.parquet"))) == files:
        return
    rng = np.random.default_rng(seed)
    per = -(-rows // files)
    for f in range(files):
        n = min(per, rows - f * per)
        with pq.ParquetWriter(root / f"part-{f:04d}.parquet", _schema()) as w:
            for s in range(0, n, row_group):
                m = min(row_group, n - s)
                cols = {f"cat_{j}": (rng.zipf(1.1, m) % 1_000_000).astype(np.int32) for j in range(20)}
                cols |= {f"x_{i:03d}": rng.standard_normal(m, dtype=np.float32) for i in range(10)}
                cols |= {f"task_{k}_bin": rng.integers(0, 2, m, dtype=np.int8) for k in range(3)}
                w.write_table(pa.table(cols, schema=_schema()), row_group_size=row_group)


def _schema():
    import pyarrow as pa

    return pa.schema([(f"cat_{j}", pa.int32()) for j in range(20)] + [(f"x_{i:03d}", pa.float32()) for i in range(10)]
                     + [(f"task_{k}_bin", pa.int8()) for k in range(3)])


def run(mode: str, root: Path, batch: int) -> dict:
    import torch

    from benchmarks.common import max_rss_bytes
    from mtlframe.batching import ColumnBatches
    from mtlframe.streaming import ParquetStream

    t0 = time.perf_counter()
    if mode == "memory":
        import pyarrow.dataset as ds

        table = ds.dataset(str(root), format="parquet").to_table()
        cols = {c: torch.from_numpy(table.column(c).to_numpy()) for c in table.column_names}
        del table
        batches = ColumnBatches(cols, batch, shuffle=True)
    else:
        batches = ParquetStream(root, batch_size=batch, shuffle=True, buffer_rows=1 << 16)
    t1 = time.perf_counter()
    rows = sum(len(b["cat_0"]) for b in batches)
    t2 = time.perf_counter()
    return {"mode": mode, "rows": rows, "load_s": round(t1 - t0, 2), "epoch_s": round(t2 - t1, 2),
            "rows_per_s": round(rows / (t2 - t1)), "peak_rss_mb": round(max_rss_bytes() / MB),
            "raw_mb": round(rows * ROW_BYTES / MB)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--row-group", type=int, default=1 << 17)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--mode", choices=["memory", "stream"], help="run one mode in this process")
    a = p.parse_args()
    if a.mode:
        print(json.dumps(run(a.mode, a.dir, a.batch)))
        return
    write(a.dir, a.rows, a.files, a.row_group)
    for mode in ("memory", "stream"):
        subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--dir", str(a.dir), "--batch", str(a.batch),
                        "--mode", mode], check=True)


if __name__ == "__main__":
    main()
