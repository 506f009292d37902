"""The harness: ``python -m benchmarks.run [--quick] [--output DIR] [--scale 1e6,1e7]``
(``mtlframe benchmark ...`` from a source checkout runs the same).

1. Adult: the reference loop, mtlframe, torch-rechub and DeepCTR-Torch train the same MMoE,
   alternating system by system within each repeat (repeat ``r`` uses seed ``2026 + r`` for the
   split and the initialization of every system); medians over the repeats.
2. Scale: mtlframe on ``synthetic`` at each ``--scale`` size, one subprocess per size (10M rows
   run only when enough memory is available).
3. Export (``--export quickstart,adult``; ``none`` to skip): the exported graphs in ONNX Runtime
   and TorchScript against torch eager at batch 1 and 1024 (:mod:`benchmarks.export_speed`).
4. GPU (``--gpu auto``, the default: when CUDA is present; ``none`` to skip): mtlframe against
   the reference loop on one device at batch 1024, 8192 and 65536 (:mod:`benchmarks.gpu`);
   without CUDA the section says why it was skipped.

Writes ``results.json`` and ``performance.png`` to ``--output``. A full run (no ``--quick`` or
``--rows``) also regenerates ``docs/performance.md`` and its plot; ``--docs`` forces that,
``--no-docs`` prevents it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import available_memory_bytes, log, prepare_adult

REPO = Path(__file__).resolve().parents[1]
GB = 1 << 30
# The columns (held about once), the sparse tables and their row-wise optimizer state: ask for this
# much available memory per row before starting a size (peak RSS at 1M rows: ~1 KB/row incl. the
# ~0.45 GB of imported libraries; the embedding rows grow slower than the data rows).
BYTES_PER_ROW_NEEDED = 1000


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def run_adult(systems: list[str], repeats: int, epochs: int, rows: int | None) -> dict:
    from benchmarks.systems import SYSTEMS, available

    skipped = {}
    for s in list(systems):
        why = available(s)
        if why:
            log(f"skipping {s}: {why}")
            skipped[s] = why
            systems.remove(s)
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(repeats):
        seed = 2026 + r
        data = prepare_adult(seed)
        if rows:
            _truncate(data, rows)
        for s in systems:  # alternate systems within each repeat
            res = SYSTEMS[s](data, epochs, seed)
            res["seed"] = seed
            runs[s].append(res)
            log(f"[adult r{r}] {s:9s} {res['samples_per_s']:>10,.0f} samples/s  "
                + "  ".join(f"{t}={v:.4f}" for t, v in res["auc"].items()))
    summary = {}
    for s, rs in runs.items():
        tasks = list(rs[0]["auc"])
        summary[s] = {
            "samples_per_s": _median([x["samples_per_s"] for x in rs]),
            "epoch_s": _median([x["epoch_s"] for x in rs]),
            "setup_s": _median([x["setup_s"] for x in rs]),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
            "rss_delta_mb": max(x["rss_delta_mb"] for x in rs),
            "predict_rows_per_s": _median([x.get("predict_rows_per_s", float("nan")) for x in rs]),
            "auc": {t: _median([x["auc"][t] for x in rs]) for t in tasks},
        }
    ref = summary.get("reference")
    for s, v in summary.items():
        v["ratio_to_reference"] = v["samples_per_s"] / ref["samples_per_s"] if ref else None
        # each repeat against the reference of the same repeat (same split, same machine moment)
        v["ratio_to_reference_per_repeat"] = [
            x["samples_per_s"] / r["samples_per_s"] for x, r in zip(runs[s], runs["reference"])] if ref else []
    if "mtlframe" in summary:
        m = summary["mtlframe"]["samples_per_s"]
        summary["mtlframe"]["ratio_to"] = {s: m / v["samples_per_s"] for s, v in summary.items() if s != "mtlframe"}
    return {"epochs": epochs, "repeats": repeats, "summary": summary, "runs": runs, "skipped": skipped}


def _truncate(data, rows: int) -> None:
    """Tiny mode: keep the first ``rows`` rows of the split, in the 80/10/10 proportions."""
    for name, frac in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        sp = data.splits[name]
        k = max(64, int(rows * frac))
        sp.cat, sp.num, sp.y = sp.cat[:k], sp.num[:k], sp.y[:k]
    data.frames["test"] = data.frames["test"].iloc[:len(data.splits["test"])]
    data.truncated = True


def run_scale(sizes: list[int], steps: int, threads: int) -> list[dict]:
    out = []
    for rows in sizes:
        need = rows * BYTES_PER_ROW_NEEDED + 2 * GB
        have = available_memory_bytes()
        if rows > 1_000_000 and have < need:
            msg = (f"not run: {have / GB:.1f} GB available, {need / GB:.1f} GB wanted "
                   "(the machine is shared)")
            log(f"[scale] {rows:,} rows {msg}")
            out.append({"rows": rows, "status": msg})
            continue
        path = Path(f"/tmp/mtlframe-scale-{os.getpid()}-{rows}.json")
        cmd = [sys.executable, "-m", "benchmarks.scale", "--rows", str(rows), "--steps", str(steps),
               "--threads", str(threads), "--output", str(path)]
        log(f"[scale] {' '.join(cmd[1:])}  ({have / GB:.1f} GB available)")
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            out.append({"rows": rows, "status": f"failed (exit {proc.returncode}): {proc.stderr[-800:]}"})
            continue
        res = json.loads(path.read_text())
        path.unlink()
        res["status"] = "ok"
        out.append(res)
        log(f"[scale] {rows:,} rows: {res['samples_per_s']:,.0f} samples/s, data pass "
            f"{res['data_pass_rows_per_s']:,.0f} rows/s, peak RSS {res['peak_rss_mb']:,.0f} MB")
    return out


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------

from benchmarks.systems import LABELS  # noqa: E402


def table_rows(adult: dict) -> list[list[str]]:
    rows = []
    for s, v in adult["summary"].items():
        rows.append([LABELS.get(s, s), f"{v['samples_per_s']:,.0f}",
                     f"{v['ratio_to_reference']:.2f}x" if v["ratio_to_reference"] else "-",
                     f"{v['epoch_s']:.3f}", f"{v['setup_s']:.2f}", f"{v['peak_rss_mb']:,.0f}",
                     f"{v['rss_delta_mb']:,.0f}", *(f"{a:.4f}" for a in v["auc"].values()),
                     f"{v['predict_rows_per_s']:,.0f}"])
    return rows


def headers(adult: dict) -> list[str]:
    tasks = list(next(iter(adult["summary"].values()))["auc"]) if adult["summary"] else []
    return ["system", "train samples/s", "vs reference", "s/epoch", "setup s", "peak RSS MB",
            "RSS rise MB", *(f"test AUC {t}" for t in tasks), "predict rows/s"]


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.markup import escape as rich_escape
    from rich.table import Table

    console = Console(stderr=False, width=max(160, Console().width))
    adult = results["adult"]
    t = Table(title=f"Adult MMoE, median of {adult['repeats']} runs, {adult['epochs']} epochs")
    for h in headers(adult):
        t.add_column(h, justify="left" if h == "system" else "right")
    for row in table_rows(adult):
        t.add_row(*row)
    console.print(t)
    for s, why in adult["skipped"].items():
        console.print(f"[yellow]skipped {s}[/]: {rich_escape(why)}")
    if results.get("scale"):
        t = Table(title="synthetic scale (mtlframe)")
        for h in ("rows", "setup s", "train samples/s", "data pass rows/s", "peak RSS MB", "raw MB", "status"):
            t.add_column(h, justify="right")
        for r in results["scale"]:
            if r["status"] != "ok":
                t.add_row(f"{r['rows']:,}", "-", "-", "-", "-", "-", r["status"][:60])
                continue
            t.add_row(f"{r['rows']:,}", f"{r['setup_s']:.1f}", f"{r['samples_per_s']:,.0f}",
                      f"{r['data_pass_rows_per_s']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
                      f"{r['raw_columnar_mb']:,.0f}", "ok")
        console.print(t)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["adult"]["summary"]
    names = list(summary)
    tasks = list(summary[names[0]]["auc"]) if names else []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(names, [summary[n]["samples_per_s"] for n in names], color="#4c72b0")
    axes[0].set_ylabel("training samples/s (median)")
    axes[0].set_title("Adult MMoE: throughput")
    width = 0.8 / max(1, len(tasks))
    for i, t in enumerate(tasks):
        xs = [j + (i - (len(tasks) - 1) / 2) * width for j in range(len(names))]
        axes[1].bar(xs, [summary[n]["auc"][t] for n in names], width=width, label=t)
    axes[1].set_xticks(range(len(names)), names)
    lo = min((summary[n]["auc"][t] for n in names for t in tasks), default=0.5)
    axes[1].set_ylim(max(0.5, lo - 0.02), 1.0)
    axes[1].set_ylabel("test AUC (median)")
    axes[1].set_title("Adult MMoE: test AUC")
    axes[1].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict, png: Path | None) -> str:
    adult = results["adult"]
    env = results["environment"]
    lines = [
        "# Performance",
        "",
        "<!-- generated by `python -m benchmarks.run` (or `mtlframe benchmark`); edit benchmarks/run.py, not this file -->",
        "",
        f"Generated {env['date']} by:",
        "",
        "```",
        env["command"],
        "```",
        "",
        f"Machine: {env['cpus']} CPU cores (shared with other jobs while measured), torch {env['torch']}, "
        f"{env['threads']} intra-op thread(s), Python {env['python']}. Absolute numbers move with the "
        "machine's load; compare the ratios, which come from one process run with the systems alternating.",
        "",
        "## Adult: the same MMoE in four systems",
        "",
        "Embedding width 8 on the 7 categorical features, 6 standardized numeric features, MMoE with 4 "
        "experts [64], towers [32], Adam 1e-3 (the fused kernel in the reference and mtlframe), batch 1024, seeded 80/10/10 split "
        f"(repeat r uses seed 2026 + r everywhere); {adult['epochs']} epochs, median of {adult['repeats']} repeats. "
        "Training samples/s counts only the time spent in training steps (data loading, preprocessing, "
        "validation and checkpointing excluded; setup is reported apart). mtlframe runs its recipe "
        "`recipes/adult_mmoe.yaml` through `mtlframe.run.train` (progress bar off) and its test AUC is the best "
        "validation checkpoint's; the anchors report the last epoch's. Peak RSS is the whole process "
        "(the harness, every library imported); \"RSS rise\" is the growth during that system's run.",
        "",
        "| " + " | ".join(headers(adult)) + " |",
        "|" + "---|" * len(headers(adult)),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(adult)]
    for s, why in adult["skipped"].items():
        lines.append(f"\nSkipped {s}: {why}")
    m = adult["summary"].get("mtlframe")
    if m and m.get("ratio_to"):
        lines += ["", "mtlframe's training throughput relative to: "
                  + ", ".join(f"{s} {r:.2f}x" for s, r in m["ratio_to"].items()) + "."]
        if m.get("ratio_to_reference_per_repeat"):
            lines[-1] += (" Against the reference, repeat by repeat: "
                          + ", ".join(f"{r:.2f}x" for r in m["ratio_to_reference_per_repeat"]) + ".")
    lines += ["", "Predict: the reference and DeepCTR-Torch time the model on pre-built arrays; torch-rechub its "
              "`evaluate` loop; mtlframe `predict_frame` from a raw pandas frame (preprocessing included) "
              "with the checkpoint already loaded."]
    if png is not None:
        lines += ["", f"![throughput and AUC]({png})"]
    scale = results.get("scale") or []
    if scale:
        lines += scale_markdown(scale)
    if (results.get("export") or {}).get("models"):
        from benchmarks.export_speed import export_markdown

        lines += export_markdown(results["export"])
    if "gpu" in results:
        from benchmarks.gpu import gpu_markdown

        lines += gpu_markdown(results["gpu"])
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def scale_markdown(scale: list[dict]) -> list[str]:
    """The scale section: one row per size, the memory split, and the samples/s ratio of the sizes."""
    steps = next((r.get("train_steps") for r in scale if r.get("status") == "ok"), "?")
    opt = next((r.get("sparse_optimizer") for r in scale if r.get("status") == "ok"), None)
    tables = (f"sparse embedding tables (`sparse: true`) updated by `{opt}`"
              if opt else "dense embedding gradients and one Adam")
    intro = ("mtlframe on `synthetic` (20 categorical features, Zipf(1.1) ids over vocabularies up to "
             f"10^6, 10 numeric, 3 binary tasks), same MMoE, {tables}, Adam 1e-3 on the rest; one "
             f"process per size (`python -m benchmarks.scale`). Train samples/s over {steps} steps of batch "
             "1024; data pass = one shuffled epoch of `ColumnBatches` at batch 4096 with no model.")
    memory = ("Memory: *raw* = the used columns of all rows at 4 bytes a value (20 int32 ids, 10 float32 "
              "numerics, 3 float32 labels: 132 bytes a row). *Peak RSS* is the whole process (`ru_maxrss`); "
              "of it, *baseline* is the process after importing torch, Lightning and mtlframe and *model* "
              "the parameters, gradients and optimizer state, neither of which grows with the data; "
              "*data / raw* = (peak - baseline - model) / raw.")
    header = ("| rows | setup s | train samples/s | data pass rows/s | peak RSS MB | baseline MB | model MB | "
              "raw MB | RSS / raw | data / raw | embedding rows | status |")
    lines = ["", "## Scale: synthetic rows", "", intro, "", memory, "", header, "|---" * 12 + "|"]
    for r in scale:
        if r["status"] != "ok":
            lines.append(f"| {r['rows']:,} | | | | | | | | | | | {r['status']} |")
            continue
        lines.append(f"| {r['rows']:,} | {r['setup_s']:.1f} | {r['samples_per_s']:,.0f} | "
                     f"{r['data_pass_rows_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | {r.get('baseline_rss_mb', 0):,.0f} | "
                     f"{r.get('model_mb', 0):,.0f} | {r['raw_columnar_mb']:,.0f} | {r['rss_over_raw']:.1f} | "
                     f"{r.get('data_rss_over_raw', float('nan')):.2f} | {r['embedding_rows']:,} | ok |")
    ok = [r for r in scale if r["status"] == "ok"]
    if len(ok) > 1:
        ratio = ok[-1]["samples_per_s"] / ok[0]["samples_per_s"]
        lines += ["", f"Train samples/s at {ok[-1]['rows']:,} rows / at {ok[0]['rows']:,} rows: {ratio:.2f}."]
    return lines


NOTES = [
    "Threads: the harness sets one intra-op thread by default (`--threads`). On this shared 2-core "
    "machine two OpenMP threads competing with other jobs made every system 5-10x slower and the "
    "ratios erratic.",
    "Hot-path changes made with this harness: `MultiTaskModule.training_step` no longer calls "
    "`self.log` for every task on every step (each call costs about 1 ms of Lightning bookkeeping, "
    "~25% of a step here); epoch means are accumulated on-device and logged once per epoch, "
    "`train/loss` every `log_every_n_steps`. Integer id columns skip the preprocessor's "
    "string conversion (about 8x faster fit + transform on 1M-row id columns, same ids).",
    ("Like with like: the reference loop uses the fused Adam kernel (`fused=True`) that mtlframe uses "
    "by default; with torch's default for-loop Adam the reference was 4-10% slower in our runs. Same "
    "model size and initialization scheme, same losses; torch-rechub and DeepCTR-Torch run their own "
    "defaults (unfused Adam)."),
    ("Second hot-path round (profiled with torch.profiler and cProfile, 1 thread; CPU time of 1,000+ "
    "steps, alternating versions): (1) MMoE computes every task's gate logits in one matrix product "
    "and all mixtures in one `bmm` ([B, T, E] x [B, E, H]): gates and mixtures of 2 tasks, forward "
    "and backward, 1.6-2.0 ms -> 0.7-0.9 ms a step (with a single gate `bmm` of [1, E] rows is 3x "
    "slower than multiply-and-sum, which single gates keep); (2) the gate softmax runs along the batch "
    "([E, B] logits): a softmax over 4 experts along the last axis costs ~80 us for 1,024 rows on this "
    "CPU, along the batch ~9 us; (3) dense embedding tables on CPU are looked up with `index_select`, "
    "whose backward (one `index_add`) took 160 us against 435 us for `embedding`'s dense backward, which "
    "adds the gradient one looked-up row at a time; (4) the static combiner skips unit weights; (5) "
    "CPU batches skip Lightning's collection walk (`transfer_batch_to_device`; on CUDA the copies are "
    "non-blocking from pinned blocks). Model step alone (forward, backward, Adam; no Lightning) "
    "184K -> 237K samples/s; the Lightning recipe path 161-170K -> 191-199K."),
    ("What remains: Lightning's loop costs about 0.9 ms a step here (hooks, the optimizer closure, "
    "callbacks, the logger connector: ~18% of a 5 ms step), measured as the gap between the same "
    "module in a plain loop and in `Trainer.fit`. A manual-optimization path calling the torch "
    "optimizer directly won ~6% but skips the backward and optimizer-step callback hooks, gradient "
    "clipping and mixed precision of Lightning, so it was not adopted."),
    ("`trainer.compile: true` (system `mtlframe-compile`, compilation timed apart as setup) makes "
    "Adult's training steps about 2x slower on this CPU (same AUC): the steps are small matrix "
    "products that inductor's CPU code does not speed up, and the compiled region's guards and "
    "AOT-autograd glue add per-step overhead. It stays an option (off by default) for GPUs and "
    "element-wise-heavy models."),
    "Scale, speed: with dense embedding gradients and a dense Adam update a step touched every row "
    "of the 2.3M-row table (3,618 samples/s at 1M rows). `sparse: true` on the embedding encoder "
    "gives the tables sparse gradients and `optimizer.sparse_optimizer` updates only the rows of "
    "the batch: at 1M rows 64K samples/s with SparseAdam and 71-78K with row-wise Adagrad, against "
    "17K with dense gradients and Adam after the memory changes below; the row-wise Adagrad state is "
    "one float per row instead of two per element (model memory 81 MB against 215 MB for SparseAdam).",
    "Scale, memory: the splits are row indices (no copied frames); the preprocessor works column by "
    "column and deletes each used column from the loaded frame once transformed; ids are int32 and "
    "integer vocabularies int64 arrays (not Python strings); the encoders stack their inputs into "
    "column-major int32/float32 blocks, freeing each input column as soon as it is copied, so setup "
    "holds the data about once plus one column (writing a column into a row-major [N, 20] matrix "
    "touched every page of it while all the inputs were still alive, which was the old peak); "
    "label priors are summed in 1M-row blocks; shuffled epochs gather 64K-row blocks column by "
    "column instead of a permuted copy of the data; checkpoints are written and read "
    "(memory-mapped) without an in-memory copy of the model and optimizer state, and when the best "
    "checkpoint is the last one written, validation and test use the weights in memory instead of "
    "reading it back; freed heap pages go back to the OS after setup. The synthetic generator keeps "
    "no effect tables here (`keep_effects: false`; 240 MB at 10^6 ids). Peak RSS at 10M rows went "
    "from 3,517 MB (2.8x raw) to the figure above; at 1M rows from 2,284 MB, where the imported "
    "libraries alone are several times the raw size, so the ratio is not meaningful there. The "
    "last 600 MB came from glibc's heap, not from data: after a large block is freed glibc raises its "
    "mmap threshold, so the 2.6 MB embedding outputs of each 4,096-row evaluation batch were carved "
    "from the heap between the exact-AUC state's small per-batch allocations, and the heap grew by "
    "about one batch's temporaries per batch over the 1M-row test pass (2.43 -> 3.04 GB, sampled "
    "every 30 batches). The data module now pins the threshold at 2 MB (`mallopt`, glibc only; "
    "`MALLOC_MMAP_THRESHOLD_` in the environment wins): the same pass adds ~125 MB.",
    "Workers: batches are index slices of the columns, taken in the training process "
    "(`ColumnBatches` is the data loader; no DataLoader worker processes), so there is no per-worker "
    "copy of the data and memory does not grow with workers. Under DDP each process prepares the "
    "columns itself (one copy per process) and takes a strided share of the rows.",
]


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.run") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 epochs, 3 repeats, scale at 1M rows only")
    p.add_argument("--output", default="runs/benchmarks", help="folder for results.json and the plot")
    p.add_argument("--systems", default="reference,mtlframe,rechub,deepctr",
                   help="comma-separated; also mtlframe-compile (mtlframe with trainer.compile: true)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default 10 (3 with --quick)")
    p.add_argument("--rows", type=int, default=None, help="use only this many Adult rows (tests)")
    p.add_argument("--scale", default="1e6", help="synthetic sizes, e.g. 1e6,1e7; 'none' to skip")
    p.add_argument("--scale-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--export", default="quickstart,adult",
                   help="models of the export section (ONNX Runtime vs torch), 'none' to skip")
    p.add_argument("--gpu", default="auto", choices=["auto", "none"],
                   help="the GPU section (benchmarks.gpu): run when CUDA is present (auto) or skip")
    p.add_argument("--docs", action="store_true",
                   help="rewrite docs/performance.md even after a --quick or --rows run")
    p.add_argument("--no-docs", action="store_true",
                   help="do not rewrite docs/performance.md (the default after --quick or --rows)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from mtlframe.run import _quiet_lightning
    _quiet_lightning()
    epochs = a.epochs or (3 if a.quick else 10)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = {"environment": {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": prog + " " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "cpus": os.cpu_count(), "threads": a.threads, "torch": torch.__version__,
        "python": platform.python_version()}}
    results["adult"] = run_adult([s.strip() for s in a.systems.split(",") if s.strip()], a.repeats, epochs, a.rows)
    sizes = [] if a.scale == "none" else [int(float(x)) for x in a.scale.split(",")]
    results["scale"] = run_scale(sizes, a.scale_steps, a.threads)
    if a.export != "none":
        from benchmarks.export_speed import run_export_speed

        results["export"] = run_export_speed([m.strip() for m in a.export.split(",") if m.strip()], a.threads,
                                             a.repeats if a.quick else max(a.repeats, 5))
    if a.gpu == "auto":
        from benchmarks.gpu import cuda_skip_reason, run_gpu_section

        why = cuda_skip_reason()
        if why:
            log(f"[gpu] section skipped: {why}")
        results["gpu"] = {"status": f"skipped: {why}", "rows": [], "ratios": []} if why else run_gpu_section()
    results["notes"] = NOTES
    results["seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    png = out / "performance.png"
    plot(results, png)
    print_tables(results)
    write_docs = not a.no_docs and (a.docs or not (a.quick or a.rows))
    if write_docs:
        docs = REPO / "docs"
        (docs / "performance.png").write_bytes(png.read_bytes())
        (docs / "performance.md").write_text(markdown(results, Path("performance.png")), encoding="utf-8")
    print(f"wrote {out / 'results.json'}, {png}" + (", docs/performance.md" if write_docs else
                                                     " (docs/performance.md unchanged: a partial run; --docs to write it)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
