"""The GPU section of the harness: ``python -m benchmarks.gpu [--output DIR] [--synthetic-rows N]``
(also run by ``python -m benchmarks.run`` when CUDA is present, and by ``benchmarks/gpu_check.sh``).

For Adult and a synthetic set (10M rows by default; the scale benchmark's 20 Zipf categorical
features, 10 numeric, 3 binary tasks, with dense embedding gradients) at batch 1024, 8192 and
65536, on one device:

* training samples/s of mtlframe (its recipe path, :func:`mtlframe.run.train`) and of the
  hand-written reference loop (:class:`benchmarks.systems.RefMMoE`, the same MMoE, with the same
  preprocessed training columns on the device, reshuffled on the device each epoch, fused Adam),
  over ``--steps`` steps after ``--warmup`` steps; the clock is read after
  ``torch.cuda.synchronize()`` at both ends of the timed window, and stopped between epochs
  (epoch-end logging and checkpoints, the next epoch's shuffle: not steps);
* the peak device memory of each (``torch.cuda.max_memory_allocated``, reset before each run);
* the share of the step spent outside device kernels, from ``torch.profiler`` over ``--profile``
  further steps: ``1 - (sum of the kernels' device time) / (wall time of those steps)``: the time
  the GPU waits for the host (kernel launches, Python, Lightning hooks, host syncs).

Without CUDA the section is skipped with the reason. ``device="cpu"`` runs the same code on the CPU
(tests, tiny sizes); there "kernels" are the self CPU time of the ``aten::`` operators.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import LR, RECIPE, log, markdown_table

BATCHES = (1024, 8192, 65536)
SYNTHETIC_ROWS = 10_000_000
MB = 1 << 20


def cuda_skip_reason() -> str | None:
    """``None`` when a CUDA device can run the section, else why not."""
    if not torch.cuda.is_available():
        built = torch.version.cuda
        return ("no CUDA device: torch.cuda.is_available() is False"
                + (f" (torch {torch.__version__} is built for CUDA {built})" if built else
                   f" (torch {torch.__version__} is a CPU build)"))
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / MB if device.type == "cuda" else None


def outside_kernel_share(prof: Any, wall_s: float, device: torch.device) -> float:
    """``1 - kernel time / wall_s`` of a finished ``torch.profiler.profile``: on CUDA the device time
    of every kernel, on the CPU the self time of the ``aten::`` operators; clipped to [0, 1]."""
    events = prof.key_averages()
    if device.type == "cuda":
        from torch.autograd import DeviceType

        # the device's own events (kernels, copies); the self times partition the device time
        on_device = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA] or list(events)
        kernel_us = sum(getattr(e, "self_device_time_total", 0.0) for e in on_device)
    else:
        kernel_us = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::"))
    if wall_s <= 0:
        return float("nan")
    return min(1.0, max(0.0, 1.0 - kernel_us / 1e6 / wall_s))


def _profiler(device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=acts)


class _Windows:
    """Step counter over warmup, timed and profiled steps; call :meth:`start` / :meth:`end`
    around each step (the reference loop) or from a Lightning callback (mtlframe)."""

    def __init__(self, device: torch.device, warmup: int, steps: int, profile_steps: int) -> None:
        self.device, self.warmup, self.steps, self.profile_steps = device, warmup, steps, profile_steps
        self.n = 0
        self.samples = 0
        self.timed_s = float("nan")
        self.outside = float("nan")
        self._t0 = self._p0 = 0.0
        self._prof = None
        self._paused: float | None = None
        self._excluded = [0.0, 0.0]   # seconds between epochs inside the timed / profiled window

    @property
    def total(self) -> int:
        return self.warmup + self.steps + self.profile_steps

    def pause(self) -> None:
        """Stop the clock between epochs (mtlframe's epoch-end logging and checkpoint, the next
        epoch's shuffle in either system): not training steps, and with one to five steps an epoch
        (Adult at batch 8192 / 65536) they would dominate the window. The next :meth:`start`
        restarts it (a device sync at each end, once an epoch)."""
        timed = self.warmup < self.n < self.warmup + self.steps
        profiled = self.warmup + self.steps < self.n < self.total
        if self._paused is None and (timed or profiled):
            _sync(self.device)
            self._paused = time.perf_counter()

    def start(self) -> None:
        if self._paused is not None:
            _sync(self.device)
            self._excluded[0 if self.n < self.warmup + self.steps else 1] += time.perf_counter() - self._paused
            self._paused = None
        if self.n == self.warmup:
            _sync(self.device)
            self._t0 = time.perf_counter()
        if self.n == self.warmup + self.steps and self.profile_steps:
            _sync(self.device)
            self._prof = _profiler(self.device)
            self._prof.__enter__()
            self._p0 = time.perf_counter()

    def end(self, rows: int) -> None:
        if self.warmup <= self.n < self.warmup + self.steps:
            self.samples += rows
        self.n += 1
        if self.n == self.warmup + self.steps:
            _sync(self.device)
            self.timed_s = time.perf_counter() - self._t0 - self._excluded[0]
        if self._prof is not None and self.n == self.total:
            _sync(self.device)
            wall = time.perf_counter() - self._p0 - self._excluded[1]
            self._prof.__exit__(None, None, None)
            self.outside = outside_kernel_share(self._prof, wall, self.device)
            self._prof = None

    def result(self) -> dict[str, float]:
        return {"samples_per_s": self.samples / self.timed_s if self.timed_s > 0 else float("nan"),
                "timed_steps": self.steps, "outside_kernels": self.outside}


def run_reference(columns: dict[str, torch.Tensor], cardinalities: list[int], tasks: list[str],
                  batch: int, device: torch.device, warmup: int, steps: int, profile_steps: int,
                  seed: int = 2026) -> dict[str, Any]:
    """The hand-written loop (:class:`benchmarks.systems.RefMMoE`, fused Adam, sum of the tasks'
    BCE means) on mtlframe's preprocessed training ``columns`` (``cat:...`` [N, F] codes,
    ``num:...`` [N, D], ``label/<task>``), moved to ``device`` once; one permutation per epoch on
    the device."""
    from torch import nn

    from benchmarks.systems import RefMMoE

    torch.manual_seed(seed)
    _reset_peak(device)
    cat_key = next(k for k in columns if k.startswith("cat:"))
    num_key = next(k for k in columns if k.startswith("num:"))
    model = RefMMoE(cardinalities, columns[num_key].shape[1], len(tasks)).to(device)
    cat = columns[cat_key].to(device).long()   # the block holds codes of one shared table (offsets applied)
    num = columns[num_key].to(device)
    y = torch.stack([columns[f"label/{t}"] for t in tasks], dim=1).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    loss_fn = nn.BCEWithLogitsLoss()
    n = y.shape[0]
    gen = torch.Generator(device=device).manual_seed(seed)
    win = _Windows(device, warmup, steps, profile_steps)
    model.train()
    while win.n < win.total:
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(0, n, batch):
            if win.n >= win.total:
                break
            win.start()
            idx = perm[i:i + batch]
            logits = model(cat[idx], num[idx])
            yb = y[idx]
            loss = sum(loss_fn(logits[:, k], yb[:, k]) for k in range(yb.shape[1]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            win.end(idx.shape[0])
        win.pause()   # the next epoch's permutation is not a step (as mtlframe's epoch end is not)
    return {**win.result(), "peak_device_mb": _peak_mb(device)}


def _windows_callback(win: _Windows, grab: dict[str, Any]):
    import pytorch_lightning as pl

    class Steps(pl.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            dm = trainer.datamodule
            if "columns" not in grab and dm is not None:
                grab["columns"] = dm.columns["train"]
                grab["feature_info"] = dm.feature_info()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            win.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            win.end(int(next(iter(batch.values())).shape[0]))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            win.pause()   # runs before the module's epoch end and the checkpoint callback

    return Steps()


def run_mtlframe(recipe: Any, batch: int, device: torch.device, warmup: int, steps: int, profile_steps: int,
                 grab: dict[str, Any]) -> dict[str, Any]:
    """mtlframe's recipe path (``train``) for ``warmup + steps + profile_steps`` optimizer steps at
    ``batch`` (``trainer.max_steps``; no validation split: ``data.split.val: 0``). The first run
    leaves the training columns and feature info in ``grab`` (the reference trains on them)."""
    from mtlframe.run import train

    _reset_peak(device)
    win = _Windows(device, warmup, steps, profile_steps)
    with tempfile.TemporaryDirectory(prefix="mtlframe-gpu-") as tmp:
        train(recipe, Path(tmp) / "run", progress=False, callbacks=[_windows_callback(win, grab)])
    return {**win.result(), "peak_device_mb": _peak_mb(device)}


def _recipe(dataset: str, batch: int, total_steps: int, accelerator: str, synthetic_rows: int,
            compile_mode: str | None = None):
    from mtlframe.recipe import load_recipe, recipe_from_dict

    if compile_mode is not None:
        return load_recipe(str(Path(__file__).resolve().parents[1] / RECIPE), [
            f"data.batch_size={batch}", f"trainer.max_steps={total_steps}", "trainer.max_epochs=100000",
            f"trainer.accelerator={accelerator}", "trainer.devices=1", "trainer.enable_progress_bar=false",
            "data.split.val=0", "logger.name=none", f"trainer.compile={{mode: {compile_mode}, dynamic: false}}"])
    common = [f"data.batch_size={batch}", f"trainer.max_steps={total_steps}", "trainer.max_epochs=100000",
              f"trainer.accelerator={accelerator}", "trainer.devices=1", "trainer.enable_progress_bar=false",
              "data.split.val=0", "logger.name=none"]
    if dataset == "adult":
        return load_recipe(str(Path(__file__).resolve().parents[1] / RECIPE), common)
    from benchmarks.scale import recipe_dict

    data = recipe_dict(synthetic_rows, total_steps, sparse=False)
    data["data"]["split"] = {"name": "random", "val": 0, "test": 0.001}
    data["trainer"].pop("limit_train_batches")
    data["trainer"].update(accelerator=accelerator, max_steps=total_steps, max_epochs=100000)
    data["trainer"].pop("limit_val_batches")
    data["data"]["batch_size"] = batch
    return recipe_from_dict(data, f"benchmarks.gpu(synthetic, rows={synthetic_rows}, batch={batch})")


def run_gpu_section(datasets: tuple[str, ...] = ("adult", "synthetic"), batches: tuple[int, ...] = BATCHES,
                    synthetic_rows: int = SYNTHETIC_ROWS, device: str = "cuda", warmup: int = 10, steps: int = 50,
                    profile_steps: int = 10, compile_mode: str | None = None,
                    on_update: Any = None) -> dict[str, Any]:
    """Every (dataset, batch) pair, mtlframe then the reference. Returns ``{"status": "ok" | the
    skip reason, "device": name, "rows": [{"dataset", "batch", "system", "samples_per_s",
    "peak_device_mb", "outside_kernels", "timed_steps"}, ...], "ratios": [{"dataset", "batch",
    "mtlframe_over_reference"}]}``. ``compile_mode`` (e.g. ``reduce-overhead``): on Adult, also
    mtlframe with ``trainer.compile: {mode: compile_mode, dynamic: false}`` at the first batch
    size (system ``mtlframe-compile (<mode>)``, run last), warmed up over a whole epoch so both
    batch shapes (full and last) are compiled before the clock starts. ``on_update(result)`` is
    called after each row (the CLI writes partial results with it)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        why = cuda_skip_reason()
        if why:
            log(f"[gpu] skipped: {why}")
            return {"status": f"skipped: {why}", "rows": [], "ratios": []}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    accelerator = "gpu" if dev.type == "cuda" else "cpu"
    out: dict[str, Any] = {"status": "ok", "device": name, "torch": torch.__version__, "warmup": warmup,
                           "steps": steps, "profile_steps": profile_steps, "synthetic_rows": synthetic_rows,
                           "rows": [], "ratios": []}
    total = warmup + steps + profile_steps
    adult_rows = 0
    for dataset in datasets:
        grab: dict[str, Any] = {}
        for batch in batches:
            recipe = _recipe(dataset, batch, total, accelerator, synthetic_rows)
            tasks = list(recipe.config.tasks)
            res = {}
            res["mtlframe"] = run_mtlframe(recipe, batch, dev, warmup, steps, profile_steps, grab)
            cols = grab["columns"]
            cat_key = next(k for k in cols if k.startswith("cat:"))
            cards = [grab["feature_info"][f].cardinality for f in cat_key[4:].split(",")]
            res["reference"] = run_reference(cols, cards, tasks, batch, dev, warmup, steps, profile_steps)
            if dataset == "adult":
                adult_rows = next(iter(cols.values())).shape[0]
            for system, r in res.items():
                row = {"dataset": dataset, "batch": batch, "system": system, **r}
                out["rows"].append(row)
                peak = "-" if r["peak_device_mb"] is None else f"{r['peak_device_mb']:,.0f} MB"
                log(f"[gpu] {dataset} batch {batch:>6} {system:9s} {r['samples_per_s']:>12,.0f} samples/s  "
                    f"peak {peak}  outside kernels {r['outside_kernels']:.0%}")
            ratio = res["mtlframe"]["samples_per_s"] / res["reference"]["samples_per_s"]
            out["ratios"].append({"dataset": dataset, "batch": batch, "mtlframe_over_reference": ratio})
            if on_update is not None:
                on_update(out)
        grab.clear()
    if compile_mode is not None and "adult" in datasets:   # last: compilation is the slowest part
        batch = batches[0]
        w = max(warmup, -(-adult_rows // batch) + 2)
        r = run_mtlframe(_recipe("adult", batch, w + steps + profile_steps, accelerator, synthetic_rows, compile_mode),
                         batch, dev, w, steps, profile_steps, {})
        out["rows"].append({"dataset": "adult", "batch": batch, "system": f"mtlframe-compile ({compile_mode})", **r})
        log(f"[gpu] adult batch {batch:>6} mtlframe-compile {r['samples_per_s']:>12,.0f} samples/s")
        if on_update is not None:
            on_update(out)
    return out


def gpu_markdown(section: dict[str, Any] | None) -> list[str]:
    """The GPU section of ``docs/performance.md``: the command, then the table or why it is pending."""
    lines = ["", "## GPU: mtlframe vs the reference loop on one device", "",
             "Command (from the repository root, on a machine with CUDA; about 5 minutes on one H100):", "",
             "```", "bash benchmarks/gpu_check.sh            # or: python -m benchmarks.gpu --output runs/gpu", "```",
             "",
             "Adult (the MMoE above) and `synthetic` (10M rows; 20 Zipf categorical features, 10 numeric, 3 "
             "binary tasks; dense embedding gradients and fused Adam in both systems) at batch 1024, 8192 and "
             "65536. The reference is the hand-written loop of the Adult table (`benchmarks.systems.RefMMoE`) "
             "on mtlframe's preprocessed training columns, held on the device; mtlframe runs its recipe path "
             "(`mtlframe.run.train`, host batches copied from pinned memory). Samples/s over the timed steps "
             "(after warm-up steps; the clock read after `torch.cuda.synchronize()` at both ends, and stopped "
             "between epochs: epoch-end logging and checkpoints and the next epoch's shuffle are not steps); peak "
             "device memory from `torch.cuda.max_memory_allocated`; *outside kernels* = 1 - (kernel time "
             "from `torch.profiler`) / (wall time of the profiled steps): the share of the step in which "
             "the GPU waits for the host. Adult at batch 1024 also runs with `trainer.compile: {mode: "
             "reduce-overhead}` (CUDA graphs; warmed up over an epoch so both batch shapes are compiled before "
             "the clock starts). Target: mtlframe >= 0.9x the reference at every batch size.",
             "",
             "**Host synchronisations.** A training step reads nothing from the device outside logging "
             "steps (every `log_every_n_steps`), on one process or under DDP: the non-finite check of "
             "`trainer.nan_loss: stop` is deferred to the logging step (and to the epoch end and any "
             "checkpoint) and still names the step that diverged; which tasks are labelled is read from the "
             "batch while it is on the host; the DWA and RLW weights and the progress bar's loss are host "
             "copies. Tested on the CPU by counting the reads that would synchronise "
             "(`mtlframe.host_syncs.HostSyncCounter`, `tests/test_host_syncs.py`), and on a GPU by "
             "`benchmarks/gpu_check.sh` with `torch.cuda.set_sync_debug_mode(\"warn\")` "
             "(`python -m benchmarks.host_syncs --accelerator gpu`). What still reads each step: "
             "`nan_loss: skip` (one read, to skip before the optimizer), a batch with a task unlabelled "
             "on this process (the global counts), the gradient-level combiners (their small solvers run "
             "on the host) and FAMO; and, under DDP, Lightning 2.6's own SIGTERM broadcast "
             "(`_broadcast_sigterm_tensor`, one `.item()` a step; Lightning-AI/pytorch-lightning#21487)."]
    if not section or section.get("status") != "ok":
        why = (section or {}).get("status", "not run")
        lines += ["", f"**Numbers pending a GPU session** ({why}).", ""]
        return lines
    lines += ["", f"Device: {section['device']}, torch {section['torch']}; {section['warmup']} warm-up, "
              f"{section['steps']} timed, {section['profile_steps']} profiled steps.", ""]
    refs = {(r["dataset"], r["batch"]): r["samples_per_s"] for r in section["rows"] if r["system"] == "reference"}
    rows = []
    for r in section["rows"]:
        peak = "-" if r["peak_device_mb"] is None else f"{r['peak_device_mb']:,.0f}"
        vs = f"{r['samples_per_s'] / refs[(r['dataset'], r['batch'])]:.2f}x" if r["system"] != "reference" else ""
        rows.append([r["dataset"], f"{r['batch']:,}", r["system"], f"{r['samples_per_s']:,.0f}", vs, peak,
                     "-" if math.isnan(r["outside_kernels"]) else f"{r['outside_kernels']:.0%}"])
    lines += markdown_table(["dataset", "batch", "system", "train samples/s", "vs reference", "peak GPU MB",
                             "outside kernels"], rows)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--output", default="runs/gpu", help="folder for gpu.json and gpu.md")
    p.add_argument("--datasets", default="adult,synthetic")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--synthetic-rows", type=int, default=SYNTHETIC_ROWS)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--profile", type=int, default=10, help="profiled steps after the timed ones")
    p.add_argument("--device", default="cuda", help="cuda (skipped without one) or cpu (a dry run)")
    p.add_argument("--compile", default=None, help="also mtlframe with trainer.compile {mode: THIS} on Adult "
                   "(e.g. reduce-overhead: CUDA graphs)")
    a = p.parse_args(argv)
    from mtlframe.run import _quiet_lightning
    _quiet_lightning()
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)

    def write(section: dict[str, Any]) -> None:   # after every row: a run cut short keeps what it measured
        (out / "gpu.json").write_text(json.dumps(section, indent=2, default=float), encoding="utf-8")
        (out / "gpu.md").write_text("\n".join(gpu_markdown(section)) + "\n", encoding="utf-8")

    section = run_gpu_section(tuple(d for d in a.datasets.split(",") if d),
                              tuple(int(b) for b in a.batches.split(",") if b), a.synthetic_rows, a.device,
                              a.warmup, a.steps, a.profile, a.compile, on_update=write)
    write(section)
    print(f"wrote {out / 'gpu.json'}, {out / 'gpu.md'} ({section['status']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
