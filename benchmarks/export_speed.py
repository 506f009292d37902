"""Exported-model speed: ONNX Runtime vs torch eager vs TorchScript on CPU, batch 1 and 1024.

``python -m benchmarks.export_speed [--models quickstart,adult] [--threads 1] [--repeats 7]
[--output runs/export_speed]`` (also the ``export`` section of ``python -m benchmarks.run``).

For each model (``quickstart``: ``recipes/quickstart.yaml``, embeddings + numeric + bag-of-words
text + MMoE, three tasks; ``adult``: ``recipes/adult_mmoe.yaml``, the MMoE of the Adult section)
the recipe is trained for one epoch (speed does not depend on the weights; ``--checkpoint
NAME=PATH`` uses a trained one), exported with :func:`mtlframe.export.export_model` (ONNX and
TorchScript, each self-checked), and the three forms of the same graph -- preprocessed inputs to
per-task predictions -- are timed on the same inputs built from the checkpoint's test rows:

* ``torch``: :class:`mtlframe.export.ExportGraph` in eager mode under ``torch.inference_mode``
  (what ``predict`` runs per batch, minus the preprocessing);
* ``torchscript``: the exported ``model.pt`` through ``torch.jit.load``;
* ``onnxruntime``: the exported ``model.onnx`` in an ``onnxruntime`` CPU session.

Threads are pinned: ``torch.set_num_threads(threads)`` and onnxruntime's ``intra_op_num_threads``
(``inter_op`` 1). Each repeat times every system in turn (``calls`` back-to-back calls, after one
warm-up call); latency is the median over repeats of the mean time per call, throughput rows/s =
batch / latency, and the ratios are taken within this one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = {"quickstart": "recipes/quickstart.yaml", "adult": "recipes/adult_mmoe.yaml"}
SYSTEMS = ("torch", "torchscript", "onnxruntime")
BATCHES = (1, 1024)
#: back-to-back calls per timing, by batch size
CALLS = {1: 300, 1024: 10}


def _train_one_epoch(name: str, folder: Path) -> Path:
    from mtlframe.recipe import load_recipe
    from mtlframe.run import train

    recipe = load_recipe(REPO / MODELS[name], ["trainer.max_epochs=1", "logger.name=none",
                                               "trainer.accelerator=cpu"])
    return Path(train(recipe, folder / name, progress=False).best_checkpoint)


def _frame_rows(loaded, n: int):
    """``n`` raw test rows of the checkpoint's data (repeated when the split is smaller)."""
    from mtlframe.export import held_out_rows

    frame = held_out_rows(loaded, n)
    if len(frame) < n:
        frame = frame.iloc[np.resize(np.arange(len(frame)), n)].reset_index(drop=True)
    return frame


def _per_call(fn, calls: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(checkpoint: Path, folder: Path, threads: int, repeats: int) -> dict:
    """Latency (ms) and throughput (rows/s) of each system at each batch size for one checkpoint."""
    from mtlframe.export import ExportGraph, export_inputs, export_model, graph_inputs, onnx_session
    from mtlframe.run import load_checkpoint

    torch.set_num_threads(threads)
    onnx = export_model(checkpoint, "onnx", folder / "onnx", rows=256, overwrite=True)
    ts = export_model(checkpoint, "torchscript", folder / "ts", rows=256, overwrite=True)
    loaded = load_checkpoint(checkpoint)
    inputs = graph_inputs(loaded)
    eager = ExportGraph(loaded, inputs).eval()
    script = torch.jit.load(str(ts.model_file))
    sess = onnx_session(onnx.model_file, threads)
    names = [g.name for g in inputs]
    rows = _frame_rows(loaded, max(BATCHES))
    out: dict = {"inputs": len(inputs), "tasks": onnx.outputs, "self_check": onnx.max_abs_diff, "batches": {}}
    for batch in BATCHES:
        feeds = export_inputs(loaded, rows.iloc[:batch].reset_index(drop=True), inputs)
        tensors = [torch.from_numpy(feeds[k]) for k in names]

        def run_torch():
            with torch.inference_mode():
                eager(*tensors)

        def run_script():
            with torch.inference_mode():
                script(*tensors)

        fns = {"torch": run_torch, "torchscript": run_script, "onnxruntime": lambda: sess.run(None, feeds)}
        times: dict[str, list[float]] = {s: [] for s in SYSTEMS}
        for _ in range(repeats):  # systems alternate within each repeat
            for s in SYSTEMS:
                times[s].append(_per_call(fns[s], CALLS[batch]))
        lat = {s: statistics.median(v) for s, v in times.items()}
        out["batches"][str(batch)] = {
            "latency_ms": {s: lat[s] * 1e3 for s in SYSTEMS},
            "rows_per_s": {s: batch / lat[s] for s in SYSTEMS},
            "onnx_speedup_vs_torch": lat["torch"] / lat["onnxruntime"],
            "torchscript_speedup_vs_torch": lat["torch"] / lat["torchscript"],
            "calls": CALLS[batch], "repeats": repeats}
    return out


def run_export_speed(models: list[str], threads: int = 1, repeats: int = 7,
                     checkpoints: dict[str, str] | None = None) -> dict:
    """The ``export`` section of the harness: :func:`measure` for each model."""
    from benchmarks.common import log

    result = {"threads": threads, "repeats": repeats, "models": {}}
    with tempfile.TemporaryDirectory(prefix="export-speed-") as tmp:
        for name in models:
            ckpt = Path(checkpoints[name]) if checkpoints and name in checkpoints else _train_one_epoch(name, Path(tmp))
            res = measure(ckpt, Path(tmp) / f"{name}-export", threads, repeats)
            res["recipe"] = MODELS.get(name, str(ckpt))
            result["models"][name] = res
            for b, r in res["batches"].items():
                log(f"[export {name} batch {b}] " + "  ".join(
                    f"{s} {r['latency_ms'][s]:.3f} ms" for s in SYSTEMS)
                    + f"  onnx/torch speedup {r['onnx_speedup_vs_torch']:.2f}x")
    return result


def export_markdown(section: dict, command: str | None = None) -> list[str]:
    """The ``## Exported model`` lines of docs/performance.md (and the table of docs/export.md)."""
    lines = ["", "## Exported model: ONNX Runtime vs torch on CPU", "",
             f"`mtlframe export` graphs (preprocessed inputs -> per-task predictions), {section['threads']} "
             f"thread(s) for torch and onnxruntime alike, median of {section['repeats']} repeats (systems "
             "alternating); batch 1 = one request, batch 1024 = bulk scoring. See [export.md](export.md)."]
    if command:
        lines += ["", "```", command, "```"]
    lines += ["", "| model | batch | torch ms | TorchScript ms | ONNX Runtime ms | torch rows/s | ONNX Runtime rows/s "
              "| ONNX Runtime / torch | TorchScript / torch |", "|---|---|---|---|---|---|---|---|---|"]
    for name, res in section["models"].items():
        for b, r in res["batches"].items():
            ms, rps = r["latency_ms"], r["rows_per_s"]
            lines.append(f"| {name} | {b} | {ms['torch']:.3f} | {ms['torchscript']:.3f} | {ms['onnxruntime']:.3f} "
                         f"| {rps['torch']:,.0f} | {rps['onnxruntime']:,.0f} | {r['onnx_speedup_vs_torch']:.2f}x "
                         f"| {r['torchscript_speedup_vs_torch']:.2f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(prog="python -m benchmarks.export_speed", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="quickstart,adult")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--output", default="runs/export_speed")
    a = p.parse_args(argv)
    from mtlframe.run import _quiet_lightning

    _quiet_lightning()
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    section = run_export_speed(models, a.threads, a.repeats, dict(c.split("=", 1) for c in a.checkpoint))
    section["command"] = "python -m benchmarks.export_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_speed.json").write_text(json.dumps(section, indent=2), encoding="utf-8")
    print("\n".join(export_markdown(section, section["command"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
