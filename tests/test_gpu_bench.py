"""The GPU section of the harness (``benchmarks/gpu.py``), run on the CPU with tiny sizes: the same
code as on a GPU (windows of steps, the reference loop on the device, mtlframe's recipe path, the
profiler's share outside kernels), so the GPU session only has to run it."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks import gpu


def test_section_on_cpu_gives_one_row_per_system_and_batch():
    res = gpu.run_gpu_section(datasets=("synthetic",), batches=(512,), synthetic_rows=4000, device="cpu",
                              warmup=1, steps=3, profile_steps=1)
    assert res["status"] == "ok" and res["device"].startswith("cpu")
    assert [(r["dataset"], r["batch"], r["system"]) for r in res["rows"]] == [
        ("synthetic", 512, "mtlframe"), ("synthetic", 512, "reference")]
    for r in res["rows"]:
        assert r["timed_steps"] == 3
        assert 100 < r["samples_per_s"] < 1e8, r          # a finite, positive rate
        assert 0.0 <= r["outside_kernels"] <= 1.0, r
        assert r["peak_device_mb"] is None                 # no device memory on the CPU
    for q in res["ratios"]:
        ref, ours = (next(r["samples_per_s"] for r in res["rows"] if (r["batch"], r["system"]) == (q["batch"], s))
                     for s in ("reference", "mtlframe"))
        assert q["mtlframe_over_reference"] == pytest.approx(ours / ref)
    md = "\n".join(gpu.gpu_markdown(res))
    assert "| synthetic | 512 | mtlframe |" in md and "pending" not in md


def test_windows_count_only_the_timed_steps():
    win = gpu._Windows(torch.device("cpu"), warmup=2, steps=3, profile_steps=0)
    for rows in (10, 20, 30, 40, 50, 60):
        win.start()
        win.end(rows)
    res = win.result()
    assert win.samples == 30 + 40 + 50                    # steps 2, 3, 4
    assert res["samples_per_s"] == pytest.approx(120 / win.timed_s)
    assert math.isnan(res["outside_kernels"])              # nothing profiled


def test_without_cuda_the_section_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = gpu.run_gpu_section(device="cuda")
    assert res["status"].startswith("skipped: no CUDA device: torch.cuda.is_available() is False")
    assert res["rows"] == []
    md = "\n".join(gpu.gpu_markdown(res))
    assert "Numbers pending a GPU session" in md and "bash benchmarks/gpu_check.sh" in md


def test_compile_mode_needing_cuda_graphs_is_named_on_cpu():
    from mtlframe.run import compile_device_note

    note = compile_device_note("reduce-overhead", "cpu")
    assert note.startswith("trainer.compile.mode: reduce-overhead captures the compiled model in CUDA graphs")
    assert "trains on cpu (trainer.accelerator: cpu)" in note and "trainer.compile: true" in note
    assert compile_device_note("max-autotune", "mps").count("trains on mps") == 1
    assert compile_device_note("default", "cpu") is None
    assert compile_device_note("max-autotune-no-cudagraphs", "cpu") is None
    assert compile_device_note("reduce-overhead", "gpu") is None
    assert (compile_device_note("reduce-overhead", "auto") is None) == torch.cuda.is_available()


def test_training_with_reduce_overhead_on_cpu_warns_and_still_compiles(tmp_path, monkeypatch):
    """The recipe is accepted (the same recipe runs on a GPU) and the run says what it does instead;
    the compilation itself is stubbed here (it takes a minute on this CPU; see docs/performance.md)."""
    from mtlframe.model import MultiTaskModel
    from mtlframe.testing import train_tiny

    calls = []
    monkeypatch.setattr(MultiTaskModel, "compile_parts", lambda self, **options: calls.append(options))
    with pytest.warns(UserWarning, match=r"reduce-overhead captures the compiled model in CUDA graphs.*trains on cpu"):
        train_tiny(tmp_path, **{"trainer.compile": {"mode": "reduce-overhead"}})
    assert calls == [{"mode": "reduce-overhead", "dynamic": None, "fullgraph": False, "backend": "inductor"}]


def test_epoch_ends_are_not_timed_as_steps():
    """Adult at batch 65536 is one step an epoch: mtlframe's epoch end (logging, a checkpoint) ran
    inside the timed window after every step, and the reference's per-epoch shuffle too. Here a
    0.3 s epoch end (the stand-in checkpoint) after each step of a 3-step window is not timed."""
    import time
    from types import SimpleNamespace

    win = gpu._Windows(torch.device("cpu"), warmup=1, steps=3, profile_steps=2)
    cb = gpu._windows_callback(win, {})
    batch = {"x": torch.zeros(5)}
    for _ in range(win.total):
        cb.on_train_batch_start(None, None, batch, 0)
        cb.on_train_batch_end(None, None, None, batch, 0)
        cb.on_train_epoch_end(SimpleNamespace(), None)
        time.sleep(0.3)
    assert win.samples == 15 and win.timed_s < 0.25          # 2 epoch ends inside the window: 0.6 s if timed
    assert 0.0 <= win.outside <= 1.0
