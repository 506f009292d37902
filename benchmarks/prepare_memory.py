"""Peak memory of ``mtlframe prepare``'s streamed fit as rows grow: it should not grow with them.

Each size runs in its own process, started after the data is written by this one, so its peak RSS
(``VmHWM``) is the fit's own. The data: ``--files`` Parquet files of 4 categorical int64 id
columns (ids uniform over ``--ids``), 4 float64 numeric columns and a binary label (72 bytes a
row raw). Reported: rows, the Parquet size, the raw size, the seconds of the fit, rows/s, the
process's RSS after imports (``baseline``) and its peak, and ``peak - baseline``.

    python -m benchmarks.prepare_memory --rows 500000 2000000 8000000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import max_rss_bytes

CATS = [f"c{j}" for j in range(4)]
NUMS = [f"x{j}" for j in range(4)]


def write(root: Path, rows: int, files: int, ids: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    per = -(-rows // files)
    for f in range(files):
        n = min(per, rows - f * per)
        cols = {c: pa.array(rng.integers(0, ids, n)) for c in CATS}
        cols.update({c: pa.array(rng.normal(0.0, 1.0, n)) for c in NUMS})
        cols["y"] = pa.array(rng.integers(0, 2, n))
        pq.write_table(pa.table(cols), root / f"part-{f:04d}.parquet")


def one(root: Path) -> dict:
    """Fit over the files of ``root`` in this process (written by another: its peak is not ours)."""
    from mtlframe.prepare import fit_parquet
    from mtlframe.preprocess import LabelSpec, Preprocessor

    baseline = max_rss_bytes()  # after imports
    pre = Preprocessor({**{c: "categorical" for c in CATS}, **{c: "numeric" for c in NUMS}},
                       [LabelSpec("y", "y", "binary")])
    t0 = time.perf_counter()
    _, n = fit_parquet(pre, root)
    sec = time.perf_counter() - t0
    peak = max_rss_bytes()
    size = sum(p.stat().st_size for p in root.glob("*.parquet"))
    return {"rows": n, "parquet_mb": size / 2**20, "raw_mb": n * 72 / 2**20, "fit_s": sec, "rows_per_s": n / sec,
            "baseline_mb": baseline / 2**20, "peak_mb": peak / 2**20, "peak_over_baseline_mb": (peak - baseline) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[500_000, 2_000_000])
    ap.add_argument("--files", type=int, default=0, help="files per size (default: one per 250,000 rows)")
    ap.add_argument("--ids", type=int, default=100_000)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(Path(a.one))))
        return
    for rows in a.rows:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp), rows, a.files or max(1, rows // 250_000), a.ids)
            out = subprocess.run([sys.executable, "-m", "benchmarks.prepare_memory", "--one", tmp],
                                 check=True, capture_output=True, text=True)
        print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
