"""Training steps make no device -> host synchronisation outside logging steps (counted on the CPU
with :class:`mtlframe.host_syncs.HostSyncCounter`; ``benchmarks/gpu_check.sh`` checks the same on a
GPU with ``torch.cuda.set_sync_debug_mode``)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from mtlframe.errors import MTLFrameError
from mtlframe.host_syncs import HostSyncCounter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_sparse_run  # noqa: E402


def test_counter_records_each_kind_of_host_read():
    t = torch.tensor([1.0, -2.0, 3.0])
    with HostSyncCounter() as syncs:
        s = t.sum()
        bool(s > 0)
        float(s)
        int(s)
        s.item()
        t.tolist()
        t.cpu()
        t[t > 0]                  # boolean-mask indexing: the output size is data-dependent
        torch.nonzero(t)
        torch.equal(t, t)
        (t > 0).numpy().any()     # .numpy() raises on a device tensor: a host value, not counted
        t * 2                     # plain device work: not counted
    assert [e.op for e in syncs.events] == [
        "aten._local_scalar_dense.default"] * 4 + ["Tensor.tolist", "Tensor.cpu", "aten.index.Tensor(bool mask)",
                                                   "aten.nonzero.default", "aten.equal.default"]
    assert {e.owner for e in syncs.events} == {"other"}          # this file
    assert all(e.where.startswith(__file__) for e in syncs.events)
    assert torch.Tensor.tolist is not None and t.tolist() == [1.0, -2.0, 3.0]   # methods restored


def test_owners_are_the_installed_packages_not_folders_named_like_them(tmp_path):
    """A checkout cloned into a folder named ``mtlframe`` (``/ci/mtlframe/tests/...``) holds test
    files that are not mtlframe's code: ownership follows the installed package folders."""
    import pytorch_lightning
    import torchmetrics

    import mtlframe
    from mtlframe.host_syncs import owner_of

    assert owner_of(str(tmp_path / "mtlframe" / "tests" / "test_x.py")) == "other"
    assert owner_of(str(tmp_path / "torchmetrics" / "x.py")) == "other"
    assert owner_of(mtlframe.__file__) == "mtlframe"
    assert owner_of(pytorch_lightning.__file__) == "pytorch_lightning"
    assert owner_of(torchmetrics.__file__) == "torchmetrics"
    assert owner_of(torch.__file__) == "torch"


def test_counter_flags_copies_that_wait_for_the_device():
    """Seen on a GPU only (a CPU-only run has no such copy): device -> host always, host -> device
    unless non_blocking; checked here on stand-ins for the tensors."""
    from types import SimpleNamespace as T

    cpu, gpu = T(device=torch.device("cpu")), T(device=torch.device("cuda", 0))
    blocking = HostSyncCounter._blocking_transfer
    assert blocking("aten._to_copy.default", (cpu,), {"device": torch.device("cuda", 0)})
    assert not blocking("aten._to_copy.default", (cpu,), {"device": torch.device("cuda", 0), "non_blocking": True})
    assert blocking("aten._to_copy.default", (gpu,), {"device": torch.device("cpu"), "non_blocking": True})
    assert not blocking("aten._to_copy.default", (gpu,), {"dtype": torch.float64})
    assert blocking("aten.copy_.default", (gpu, cpu), {}) and not blocking("aten.copy_.default", (gpu, cpu, True), {})
    assert blocking("aten.copy_.default", (cpu, gpu, True), {}) and not blocking("aten.copy_.default", (cpu, cpu), {})


@pytest.mark.parametrize("combiner", ["static", "dwa", "rlw"])
def test_training_steps_read_nothing_on_the_host_outside_logging_steps(combiner):
    """Two epochs, ``log_every_n_steps: 4``: the steps in between read nothing from the device (a
    NaN check of every step and the DWA/RLW weight reads used to sync every step); the logging
    steps do read (the deferred non-finite check of the steps before them)."""
    from benchmarks.host_syncs import count_training_syncs

    res = count_training_syncs({"combiner": {"name": combiner}}, log_every=4, epochs=2)
    assert res["batches"] == 26                                     # 2 x ceil(1600 / 128)
    assert res["outside_logging"] == []
    ours = [e for e in res["logging"] if e["owner"] == "mtlframe"]
    assert {(e["batch"], e["where"].split("mtlframe/")[-1].split(":")[0]) for e in ours} >= {
        (0, "module.py"), (4, "module.py"), (8, "module.py"), (12, "module.py")}


def test_nan_loss_skip_reads_each_step_once():
    """``nan_loss: skip`` decides on the host, before the optimizer step (the documented cost): one
    read per step, from the module, and nothing else."""
    from benchmarks.host_syncs import count_training_syncs

    res = count_training_syncs({"trainer.nan_loss": "skip"}, log_every=4, epochs=1)
    outside = res["outside_logging"]
    assert [e["batch"] for e in outside] == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert {(e["op"], e["where"].split("mtlframe/")[-1].split(":")[0]) for e in outside} == {
        ("Tensor.tolist", "module.py")}


class _Batches(pl.Callback):
    """Which batches ran, and the host reads of mtlframe per batch."""

    def __init__(self, counter: HostSyncCounter) -> None:
        self.counter, self.started = counter, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.started.append(batch_idx)
        self.counter.step = batch_idx

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.counter.step = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self.counter.step = None


def test_sparse_labels_read_the_counts_only_when_a_task_is_unlabelled_here(tmp_path):
    """With missing labels, whether a task enters the combiner depends on the global counts; they
    are read only at a step where this process's batch has a task without a labelled row (steps 1,
    2, 4 of the plan); a step where every task is labelled here reads nothing."""
    plan = [{"task_0": (8, 8), "task_1_bin": (3, 7)}, {"task_0": (8, 8), "task_1_bin": (0, 0)},
            {"task_0": (0, 0), "task_1_bin": (2, 2)}, {"task_0": (1, 0), "task_1_bin": (0, 1)},
            {"task_0": (0, 0), "task_1_bin": (0, 0)}, {"task_0": (5, 5), "task_1_bin": (5, 5)}]
    counter = HostSyncCounter()
    cb = _Batches(counter)
    with counter:
        ddp_sparse_run.main(str(tmp_path / "o.pt"), "static", 1, plan=plan, log_every=100, callbacks=[cb])
    assert cb.started == [0, 1, 2, 3, 4, 5]
    ours = sorted({e.step for e in counter.events if e.owner == "mtlframe" and e.step is not None})
    assert ours == [0, 1, 2, 4]        # 0: the logging step; 3 and 5 have every task labelled here


def test_deferred_stop_names_the_step_that_diverged(tmp_path):
    """``nan_loss: stop`` without a per-step read: the infinite loss of step 1 is found at the next
    logging step (4) and the error names step 1, not the step where it was found."""
    counter = HostSyncCounter()
    cb = _Batches(counter)
    plan = [{"task_0": (8, 8), "task_1_bin": (8, 8)}] * 6
    with pytest.raises(MTLFrameError, match=r"not finite at global step 1 \(epoch 1\): task loss 'task_0' \(inf\)"):
        ddp_sparse_run.main(str(tmp_path / "o.pt"), "static", 1, plan=plan, inf_label=(1, "task_0"), log_every=4,
                            callbacks=[cb])
    assert cb.started == [0, 1, 2, 3, 4]


def test_a_validation_after_a_deferred_non_finite_step_never_scores_the_diverged_model(tmp_path, monkeypatch):
    """``nan_loss: stop``, validation every 3 steps, logging every 50: the loss is first infinite at
    step 4 (SGD lr 3 diverges: losses 7.9, 12.5, 1.6e6, 1.6e9, inf); the validation due after step 6
    must stop the run naming step 4 before scoring the diverged model, and every checkpoint on disk
    is the step-3 one (the last finite state)."""
    from mtlframe.module import MultiTaskModule
    from mtlframe.testing import train_tiny

    scored = []
    orig = MultiTaskModule.on_validation_epoch_end

    def record(self):
        scored.append(self.global_step)
        return orig(self)

    monkeypatch.setattr(MultiTaskModule, "on_validation_epoch_end", record)
    with pytest.raises(MTLFrameError, match=r"not finite at global step 4 \(epoch 1\): task loss 'task_0' \(inf\)"):
        train_tiny(tmp_path, optimizer={"name": "sgd", "lr": 3.0}, early_stopping={"patience": 1},
                   **{"trainer.log_every_n_steps": 50, "data.batch_size": 32, "trainer.val_check_interval": 3})
    assert scored == [3]
    files = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert [f.name for f in files] == ["best.ckpt", "last.ckpt"]
    assert [torch.load(f, map_location="cpu", weights_only=True)["global_step"] for f in files] == [3, 3]


def test_ctrl_c_after_a_deferred_non_finite_step_says_the_model_diverged(tmp_path, monkeypatch):
    """Ctrl-C at step 6 after the loss of step 4 was infinite (nan_loss: stop, logging every 50):
    interrupted.ckpt is not written (the diverged model), and the message says why, naming step 4
    (before: only "interrupted ... holds no checkpoint", the divergence hidden in status.json)."""
    from mtlframe import module as module_mod
    from mtlframe.run import RunInterrupted
    from mtlframe.testing import train_tiny

    real = module_mod.MultiTaskModule.training_step

    def step(self, batch, batch_idx):
        if batch_idx == 6:
            raise KeyboardInterrupt
        return real(self, batch, batch_idx)

    monkeypatch.setattr(module_mod.MultiTaskModule, "training_step", step)
    with pytest.raises(RunInterrupted) as err:
        train_tiny(tmp_path, optimizer={"name": "sgd", "lr": 3.0},
                   **{"trainer.log_every_n_steps": 50, "data.batch_size": 32})
    assert ("at epoch 1/1, step 6. interrupted.ckpt was not saved: the training loss is not finite at global step 4 "
            "(epoch 1): task loss 'task_0' (inf)") in str(err.value)
    assert not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()
