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

``--train`` measures ``mtlframe train`` itself (``data.stream``, docs/streaming.md) on its own
synthetic rows (4 skewed int64 ids over 100K values, 4 float32 numerics, a 0/1 click and a float32
rating: 52 bytes a row raw), written in chunks of ``--row-group`` rows::

    nice -n 10 python -m benchmarks.streaming --train --sizes 50000000 10000000 --dir /tmp/streamtrain

For each size: ``mtlframe prepare`` (timed; skipped when its state exists), then one epoch of
``mtlframe train`` in streaming mode,
in a child process whose whole process tree (the trainer and its data-loader workers) is sampled
every 0.25 s: the peak of the summed RSS (shared pages counted in every process: an upper bound)
and of the summed PSS. For sizes up to ``--compare-max`` rows (default 10M) the same model and
batch are also trained in memory (``data.dataset`` on the one file, ``data.split`` val/test 0)
and the samples/s compared (``train_seconds`` of ``metrics.json``: the fit, without the loading).
``--repeat N`` runs each mode N times, alternating their order, and reports the medians. One JSON
line per size.
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


TRAIN_IDS, TRAIN_NUM = 4, 4


def write_train(root: Path, rows: int, row_group: int, seed: int = 2026) -> Path:
    """One Parquet file ``root/part-0000.parquet`` of ``rows`` synthetic rows (ids, numerics, a click
    that depends on them, a rating), written ``row_group`` rows at a time; kept when it exists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    path = root / "part-0000.parquet"
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    rng = np.random.default_rng(seed)
    schema = pa.schema([(f"id_{j}", pa.int64()) for j in range(TRAIN_IDS)]
                       + [(f"x_{j}", pa.float32()) for j in range(TRAIN_NUM)]
                       + [("click", pa.int8()), ("rating", pa.float32())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as w:
        for s in range(0, rows, row_group):
            m = min(row_group, rows - s)
            # skewed ids (exponential: a few frequent, a long tail), cheaper to draw than Zipf
            cols = {f"id_{j}": (rng.standard_exponential(m) * 4000).astype(np.int64) % 100_000
                    for j in range(TRAIN_IDS)}
            cols |= {f"x_{j}": rng.standard_normal(m, dtype=np.float32) for j in range(TRAIN_NUM)}
            logit = cols["x_0"] + 0.5 * (cols["id_0"] % 7 == 0) - 0.3
            cols["click"] = (rng.random(m) < 1 / (1 + np.exp(-logit))).astype(np.int8)
            cols["rating"] = (2 * cols["x_1"] + rng.standard_normal(m, dtype=np.float32)).astype(np.float32)
            w.write_table(pa.table(cols, schema=schema), row_group_size=row_group)
    tmp.rename(path)
    return path


def train_recipe(data: Path, batch: int, workers: int, stream: bool) -> dict:
    """The benchmark's recipe: ``stream`` reads the directory, else the file loads in memory."""
    ids = [f"id_{j}" for j in range(TRAIN_IDS)]
    nums = [f"x_{j}" for j in range(TRAIN_NUM)]
    dataset = {"name": "parquet", "path": str(data if stream else data / "part-0000.parquet"),
               "features": {**dict.fromkeys(ids, "categorical"), **dict.fromkeys(nums, "numeric")},
               "labels": ["click", "rating"]}
    recipe = {"seed": 1, "data": {"dataset": dataset, "batch_size": batch},
              "tasks": {"click": {"type": "binary", "label": "click", "metrics": ["auc"]},
                        "rating": {"type": "regression", "label": "rating", "metrics": ["rmse"]}},
              "model": {"encoders": [{"name": "embedding", "features": ids, "dim": 8},
                                     {"name": "numeric", "features": nums}],
                        "backbone": {"name": "shared-bottom", "hidden": [64]},
                        "tower": {"name": "mlp", "hidden": [32]}},
              "optimizer": {"name": "adam", "lr": 1e-3},
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False}}
    if stream:
        recipe["data"]["stream"] = {"workers": workers, "buffer_rows": 1 << 16}
    else:
        recipe["data"]["split"] = {"name": "random", "val": 0.0, "test": 0.0}
    return recipe


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from ``/proc/<pid>/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; sample its process tree every 0.25 s: peak summed RSS / PSS (MB), processes."""
    import threading

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss": 0, "pss": 0, "procs": 0}

    def sample() -> None:
        while proc.poll() is None:
            pids = _tree(proc.pid)
            peak["rss"] = max(peak["rss"], sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids))
            peak["pss"] = max(peak["pss"], sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            peak["procs"] = max(peak["procs"], len(pids))
            time.sleep(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    t.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return {"peak_tree_rss_mb": round(peak["rss"] / 1024), "peak_tree_pss_mb": round(peak["pss"] / 1024),
            "processes": peak["procs"]}


def bench_train(root: Path, sizes: list[int], batch: int, workers: int, row_group: int, compare_max: int,
                repeat: int = 1) -> None:
    import statistics

    import yaml

    for rows in sizes:
        data = root / f"rows{rows}"
        t0 = time.perf_counter()
        write_train(data, rows, row_group)
        written = time.perf_counter() - t0
        size_mb = round(sum(p.stat().st_size for p in data.glob("*.parquet")) / MB)
        modes = ["stream", "memory"] if rows <= compare_max else ["stream"]
        result: dict = {"rows": rows, "parquet_mb": size_mb, "raw_mb": round(rows * 52 / MB),
                        "write_s": round(written, 1), "batch": batch, "workers": workers}
        recipes = {}
        for mode in modes:
            recipes[mode] = root / f"{mode}-{rows}.yaml"
            recipes[mode].write_text(yaml.safe_dump(train_recipe(data, batch, workers, mode == "stream")))
        state = data / "_mtlframe_prepared.pt"
        if not state.exists():
            t0 = time.perf_counter()
            result["prepare"] = measured([sys.executable, "-m", "mtlframe.cli", "prepare", str(recipes["stream"])])
            result["prepare"]["seconds"] = round(time.perf_counter() - t0, 1)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for r in range(repeat):   # alternating order: a slower spell of a shared machine hits both modes
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                run = root / f"run-{mode}-{rows}"
                t0 = time.perf_counter()
                mem = measured([sys.executable, "-m", "mtlframe.cli", "train", str(recipes[mode]), "--run-dir",
                                str(run), "--overwrite"])
                metrics = json.loads((run / "metrics.json").read_text())
                runs[mode].append({**mem, "train_seconds": metrics["train_seconds"],
                                   "samples_per_s": round(rows / metrics["train_seconds"]),
                                   "wall_s": round(time.perf_counter() - t0, 1)})
        for mode, got in runs.items():
            result[mode] = {"runs": got, "median_samples_per_s": statistics.median(g["samples_per_s"] for g in got),
                            "max_peak_tree_rss_mb": max(g["peak_tree_rss_mb"] for g in got)}
        if "memory" in result:
            ratio = result["stream"]["median_samples_per_s"] / result["memory"]["median_samples_per_s"]
            result["stream_vs_memory"] = round(ratio, 3)
        print(json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--row-group", type=int, default=1 << 17)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--mode", choices=["memory", "stream"], help="run one mode in this process")
    p.add_argument("--train", action="store_true", help="measure mtlframe train (data.stream vs in memory)")
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000_000, 10_000_000], help="--train: rows")
    p.add_argument("--workers", type=int, default=2, help="--train: data.stream.workers")
    p.add_argument("--compare-max", type=int, default=10_000_000, help="--train: largest size also run in memory")
    p.add_argument("--repeat", type=int, default=1, help="--train: runs of each mode (medians reported)")
    a = p.parse_args()
    if a.train:
        bench_train(a.dir, a.sizes, a.batch, a.workers, a.row_group, a.compare_max, a.repeat)
        return
    if a.mode:
        print(json.dumps(run(a.mode, a.dir, a.batch)))
        return
    write(a.dir, a.rows, a.files, a.row_group)
    for mode in ("memory", "stream"):
        subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--dir", str(a.dir), "--batch", str(a.batch),
                        "--mode", mode], check=True)


if __name__ == "__main__":
    main()
