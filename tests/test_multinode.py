"""Multi-process and multi-node training (docs/multinode.md): ``trainer.strategy`` is validated
(FSDP, DeepSpeed, ddp_spawn and XLA refused at the key with the reason); two torchrun "nodes" on
one machine train on disjoint rows and give the weights of the single-node 2-process run; a
2-process run interrupted in the middle of an epoch and resumed gives the weights of the run
straight through."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from mtlframe import run as run_mod
from mtlframe.errors import RecipeError
from mtlframe.recipe import REFUSED_STRATEGIES, STRATEGIES, load_recipe, recipe_from_dict
from mtlframe.run import build_system
from mtlframe.testing import tiny_recipe


@pytest.mark.parametrize("strategy, reason", [
    ("fsdp", "requires a GPU accelerator.*FSDP needs a non-CPU accelerator device.*gradient-level combiners"),
    ("fsdp_cpu_offload", "FSDP shards every parameter"),
    ("deepspeed_stage_2", "DeepSpeed is not supported"),
    ("ddp_spawn", "cannot be pickled. Use `strategy: ddp`"),
    ("xla", "TPU/XLA training is not supported"),
    ("ddpp", "not a Lightning strategy mtlframe trains with; did you mean 'ddp'"),
])
def test_a_strategy_mtlframe_cannot_train_with_is_refused_at_the_key(tmp_path, strategy, reason):
    path = tmp_path / "r.yaml"
    data = tiny_recipe(**{"trainer.strategy": strategy})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RecipeError, match=reason) as exc:
        load_recipe(path)
    (where, _), = exc.value.problems
    assert where == "trainer.strategy"
    line = path.read_text().splitlines().index(f"  strategy: {strategy}") + 1
    assert f"r.yaml:{line}" in str(exc.value)


def test_every_lightning_strategy_is_either_accepted_or_refused_with_a_reason():
    from pytorch_lightning.strategies import StrategyRegistry

    lightning = set(StrategyRegistry.available_strategies()) | {"auto"}
    assert lightning == set(STRATEGIES) | set(REFUSED_STRATEGIES)
    for strategy in ("auto", "ddp", "ddp_fork", "ddp_find_unused_parameters_true", "single_device"):
        assert recipe_from_dict(tiny_recipe(**{"trainer.strategy": strategy})).config.trainer.strategy == strategy



class _CtrlC(pl.Callback):
    """Sends this process a SIGINT at the start of training batch ``batch`` of the first epoch."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_mid_epoch_checkpoint_is_not_resumed_on_another_number_of_processes(tmp_path):
    """A run stopped after batch 3 of its epoch by one process: its position is a count of that
    process's batches, so 2 processes would train some of the epoch's rows twice and others never.
    Refused at trainer.devices before anything is started or written; the same process count resumes."""
    recipe = recipe_from_dict(tiny_recipe(**{"data.dataset.num_rows": 600, "data.batch_size": 64}))
    run_dir = tmp_path / "run"
    with pytest.raises(run_mod.RunInterrupted):
        run_mod.train(recipe, run_dir, progress=False, callbacks=[_CtrlC(3)])
    status = (run_dir / "status.json").read_text()
    assert run_mod.resume_target(run_dir).position == {"epoch": 0, "batches": 4, "epoch_done": False, "step": 4,
                                                        "world_size": 1}
    with pytest.raises(RecipeError, match=r"written by 1 process\(es\) in the middle of epoch 1 \(after its batch "
                                          r"4\), and this resume has 2.*trainer.num_nodes x trainer.devices = 1") as exc:
        run_mod.train(None, resume=run_dir, overrides=["trainer.devices=2", "trainer.strategy=ddp"])
    assert exc.value.problems[0][0] == "trainer.devices"
    assert (run_dir / "status.json").read_text() == status          # the run is left as it was
    with pytest.raises(RecipeError, match="this resume has 2"):
        run_mod.train(None, resume=run_dir, overrides=["trainer.devices=1", "trainer.num_nodes=2"])
    assert run_mod.train(None, resume=run_dir, progress=False).run_dir == run_dir   # same count: resumes



@pytest.mark.parametrize("env, printed", [({}, True), ({"RANK": "1", "LOCAL_RANK": "0"}, False),  # torchrun node 1
                                          ({"SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, False),  # srun task 1
                                          ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, True)])
def test_only_the_first_process_prints_the_memory_plan(monkeypatch, env, printed):
    """Before the trainer exists the rank comes from the launcher's variables: SLURM's too (before
    the fix the second SLURM task printed the plan as well)."""
    import io

    from mtlframe import memory_plan

    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_LOCALID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    recipe = recipe_from_dict(tiny_recipe())
    memory_plan.report(torch.nn.Linear(3, 2), recipe.config, capacity=10**9, file=out)
    assert ("memory plan" in out.getvalue()) is printed


# -- real processes: two torchrun "nodes", a 2-process run interrupted and resumed -------------------

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "multinode_run.py"
#: 480 rows: 384 training rows in global batches of 2 x 32 = 6 steps per epoch, validated (and
#: last.ckpt written) after batches 3 and 6; dropout draws from the random state the resume restores
TINY = {"data.dataset.num_rows": 480, "data.batch_size": 32, "trainer.max_epochs": 2, "trainer.val_check_interval": 3,
        "model.tower": {"name": "mlp", "hidden": [8], "dropout": 0.2}}
STOP_AT = 10    # the 4th step of epoch 2; its last.ckpt is the one after batch 3 (step 9)


def _launch(commands: list[list[str]], env: dict[str, str] | list[dict[str, str]],
            timeout: int = 240) -> list[tuple[int, str]]:
    """Run the commands at once (each in its own process group, all killed whole when one hangs), with
    ``env`` (one for all or one each) added to the environment: ``[(exit status, output), ...]``."""
    procs = [subprocess.Popen(c, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **e},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for c, e in zip(commands, [env] * len(commands) if isinstance(env, dict) else env)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(q.pid, signal.SIGKILL)
            pytest.fail(f"processes hung (killed after {timeout} s):\n{p.communicate()[0][-3000:]}")
    return [(p.returncode, log) for p, log in zip(procs, logs)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(folder: Path) -> list[dict]:
    return [torch.load(folder / f"rows.{r}.pt") for r in (0, 1)]


def _key(rows: torch.Tensor) -> list[tuple]:
    return [tuple(r) for r in rows.tolist()]


def _last(run: Path):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"], ckpt["optimizer_states"][0]["state"]


#: Lightning's SLURM environment, as ``srun --nodes 2 --ntasks-per-node 1`` sets it for task ``r``
def _slurm(r: int, port: int) -> dict[str, str]:
    return {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": str(r), "SLURM_LOCALID": "0",
            "SLURM_NODEID": str(r), "SLURM_JOB_NAME": "mtl", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "127.0.0.1",
            "MASTER_PORT": str(port)}


@pytest.mark.skipif(sys.platform != "linux", reason="multi-process CPU training tested on Linux")
def test_two_nodes_train_disjoint_rows_and_a_resumed_run_ends_on_their_weights(tmp_path):
    """Three launches of ``mtlframe train`` (gloo, CPU, on one machine):

    1. two ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank r`` "nodes" train 2 epochs straight:
       each process (rank = node) trains its own half of every epoch's rows, together each row once;
    2. the same recipe as two SLURM tasks on two "nodes" (Lightning's SLURM environment from the
       variables srun sets), stopped at step 10 (the 4th of epoch 2), trains the same rows, batch for
       batch, and leaves the mid-epoch last.ckpt of step 9;
    3. that run resumed on one node with ``devices: 2`` trains the rest of epoch 2 (its batches 4 to
       6 on each process, the same rows) and ends on the weights and optimizer state of run 1, bit
       for bit.

    Before the fix the resumed run's second process refused to start (it found status.json marked
    running by the first) and the resume never trained."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(**TINY)))
    nodes, split = tmp_path / "nodes", tmp_path / "split"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    two_nodes = ["trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp"]
    # torchrun's agents meet in an exit barrier once their workers end; on a loaded machine one agent
    # can miss the other's arrival and waits out torch's 300 s barrier timeout, then exits 0 (seen
    # once in CI after the training had finished): the launch gets more than that before it counts as hung
    done = _launch([node + ["--node-rank", str(r), str(RUNNER), "train", str(recipe), "--run-dir", str(nodes)]
                    + two_nodes for r in (0, 1)], {"MTLFRAME_TEST_ROWS": str(tmp_path / "rows_nodes")}, timeout=420)
    assert [rc for rc, _ in done] == [0, 0], done[0][1][-3000:] + done[1][1][-3000:]
    straight = _rows(tmp_path / "rows_nodes")
    assert [r["ranks"] for r in straight] == [(0, 2, 0, 0), (1, 2, 1, 0)]   # (global rank, world, node, local)
    dm, _, _ = build_system(recipe_from_dict(tiny_recipe(**TINY)))
    every = sorted(_key(dm.columns["train"][next(k for k in dm.columns["train"] if k.startswith("num:"))]))
    assert len(every) == 384
    for epoch in (0, 1):
        shares = [_key(torch.cat(r["epochs"][epoch])) for r in straight]
        assert [len(s) for s in shares] == [192, 192] and not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == every                      # each row once per epoch

    port = _free_port()
    done = _launch([[sys.executable, str(RUNNER), "train", str(recipe), "--run-dir", str(split)] + two_nodes] * 2,
                   [{**_slurm(r, port), "MTLFRAME_TEST_STOP_AT": str(STOP_AT),
                     "MTLFRAME_TEST_ROWS": str(tmp_path / "rows_stopped")} for r in (0, 1)])
    assert [rc for rc, _ in done] == [130, 130], done[0][1][-3000:] + done[1][1][-3000:]
    assert "interrupted (Ctrl-C) during training at epoch 2/2, step 10" in done[0][1]
    # only the first process prints the memory plan (before the fix SLURM's second task did too)
    assert "memory plan" in done[0][1] and "memory plan" not in done[1][1]
    stopped = _rows(tmp_path / "rows_stopped")
    assert [r["ranks"] for r in stopped] == [(0, 2, 0, 0), (1, 2, 1, 0)]
    for r in (0, 1):
        for epoch, n in ((0, 6), (1, 4)):
            assert len(stopped[r]["epochs"][epoch]) == n
            for a, b in zip(stopped[r]["epochs"][epoch], straight[r]["epochs"][epoch]):
                assert torch.equal(a, b)
    assert _last(split)[0] == STOP_AT - 1

    (rc, log), = _launch([[sys.executable, str(RUNNER), "train", "--resume", str(split), "trainer.num_nodes=1",
                           "trainer.devices=2"]], {"MTLFRAME_TEST_ROWS": str(tmp_path / "rows_resumed")})
    assert rc == 0, log[-3000:]
    assert "at epoch 2, after its batch 3 (step 9)" in log
    resumed = _rows(tmp_path / "rows_resumed")
    assert [r["ranks"] for r in resumed] == [(0, 2, 0, 0), (1, 2, 0, 1)]
    for r in (0, 1):   # the rest of epoch 2: its batches 4 to 6, not the epoch from its start
        assert list(resumed[r]["epochs"]) == [1] and len(resumed[r]["epochs"][1]) == 3
        for a, b in zip(resumed[r]["epochs"][1], straight[r]["epochs"][1][3:]):
            assert torch.equal(a, b)
    (step_a, w_a, o_a), (step_b, w_b, o_b) = _last(nodes), _last(split)
    assert step_a == step_b == 12
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        assert torch.equal(w_a[k], w_b[k]), k
    for i in o_a:
        for k, v in o_a[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(o_b[i][k])), (i, k)


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_launcher_process_counts_that_differ_from_the_recipe_are_a_recipe_error_before_the_run(tmp_path, monkeypatch,
                                                                                             launcher):
    """torchrun with 2 processes per node (or srun with 2 tasks per node) and ``trainer.devices: 1``:
    a recipe error at ``trainer.devices`` naming both counts and the rule, before the run folder is
    made -- not a ValueError with a stack trace from inside Lightning's launcher in every process."""
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import train
    from mtlframe.testing import tiny_recipe

    env = ({"TORCHELASTIC_RUN_ID": "t", "WORLD_SIZE": "2", "RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29599"} if launcher == "torchrun" else
           {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_NAME": "mtl",
            "SLURM_JOB_ID": "1"})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    recipe = recipe_from_dict(tiny_recipe(**{"trainer.devices": 1, "trainer.strategy": "ddp"}), "<tiny>")
    with pytest.raises(RecipeError) as err:
        train(recipe, tmp_path / "run", progress=False)
    assert [k for k, _ in err.value.problems] == ["trainer.devices"]
    msg = str(err.value)
    assert ("does not match the world size (2)" if launcher == "torchrun" else "`--ntasks-per-node=2` does not match") \
        in msg
    assert "under torchrun, `--nproc-per-node` must equal trainer.devices" in msg
    assert not (tmp_path / "run").exists()


def test_the_parameter_count_does_not_depend_on_tables_sharded_out_of_the_module(tmp_path, monkeypatch):
    """An encoder that shards its tables in ``configure_model`` keeps them outside the module tree
    (``torchrec-embedding`` under DDP): ``parameters:`` / ``metrics.json`` still count them (before:
    2 processes reported 1,514 parameters for the 10,466 of the same model in one process)."""
    import json

    from mtlframe.module import MultiTaskModule
    from mtlframe.testing import train_tiny

    def shard_out(self):   # what DistributedModelParallel does to the module tree, in one process
        enc = self.model.encoders[1]
        name = next(iter(enc._modules))
        object.__setattr__(enc, name, enc._modules.pop(name))   # still used by forward, not a submodule

    monkeypatch.setattr(MultiTaskModule, "configure_model", shard_out)
    result = train_tiny(tmp_path, **{"trainer.limit_train_batches": 1})
    # numeric: none; embedding [21 x 4] = 84; mmoe + towers: 758 (the memory plan's "other parameters")
    assert result.num_parameters == 84 + 758
    assert json.loads((tmp_path / "metrics.json").read_text())["num_parameters"] == 842
