"""``torchrec-embedding``: the ``embedding`` encoder's output from TorchRec tables, sharded across
processes.

One ``EmbeddingBagCollection`` table per feature (``t_<feature>``): single-valued categorical
features look up one row (sum pooling of one id), multi-categorical ones mean-pool their non-zero
ids, exactly as the built-in ``embedding`` encoder (fused table, ``EmbeddingBag(mode="mean",
padding_idx=0)``). The output is the built-in's: ``[B, F * d]``, the single-valued features in
order, then the multi-categorical ones, so a recipe switches by changing the encoder's name.

Training in one process, the tables are ordinary parameters updated in the backward pass by the
encoder's own optimizer (``optimizer``, ``lr``; TorchRec's ``apply_optimizer_in_backward``), not
by the recipe's optimizer. In several processes (Lightning's ``ddp`` strategy), Lightning's
``configure_model`` hook calls :meth:`TorchRecEmbeddingEncoder.configure_distributed`, which plans
the sharding with TorchRec's ``EmbeddingShardingPlanner`` and wraps the tables in
``DistributedModelParallel`` (DMP): each process holds its shards only, lookups are exchanged
with all-to-all, and FBGEMM's fused optimizers update the shards in the backward pass. The DMP is
kept out of the module tree, so Lightning's DDP all-reduces the dense parameters only.

Checkpoints hold each table whole (gathered from the shards when the checkpoint is written), under
the keys of the unsharded encoder: a checkpoint written by N processes loads into one process
(``predict``, ``evaluate``, ``serve``) and into any number of processes again.

The paper behind the sharded tables: Ivchenko et al., "TorchRec: a PyTorch Domain Library for
Recommendation Systems", RecSys 2022. Row-wise Adagrad (FBGEMM's): the Adagrad of Duchi et al.
(JMLR 2011) with one accumulator per row (the mean of the row's squared gradients).
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlframe.encoders.base import Encoder, release_column
from mtlframe.errors import ArgumentError, MTLFrameError
from mtlframe.features import FeatureInfo

#: the recipe's sharding names -> TorchRec's sharding types (``auto``: the planner picks among
#: those the device offers; data-parallel replication is never chosen: it would keep every table
#: whole on every process, which is the built-in encoder)
SHARDING = {
    "table-wise": ("table_wise",),
    "row-wise": ("row_wise",),
    "column-wise": ("column_wise",),
    "table-column-wise": ("table_column_wise",),
    "table-row-wise": ("table_row_wise",),
    "auto": ("table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise"),
}
#: sharding types TorchRec's CPU kernels offer (``EmbeddingBagCollectionSharder.sharding_types("cpu")``)
CPU_SHARDING = ("table_wise", "column_wise", "table_column_wise")
OPTIMIZERS = ("sgd", "adagrad", "rowwise-adagrad", "adam")

INSTALL = ('pip install --no-deps fbgemm-gpu-cpu==1.N.0 torchrec==1.N.0 && pip install tensordict tqdm '
           'pyre-extensions  (N = torch minor - 5: torch 2.13 -> 1.8.0, torch 2.14 -> 1.9.0; on a GPU '
           'fbgemm-gpu instead of fbgemm-gpu-cpu)')


def import_torchrec():
    """Import ``torchrec`` (and FBGEMM's operators); its absence is an error naming the install line.

    Raises:
        MTLFrameError: torchrec or fbgemm is not installed (``ImportError``) or FBGEMM was built for
            another torch (``OSError``: undefined symbol).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchrec  # noqa: F401
            import torchrec.distributed  # noqa: F401
    except (ImportError, OSError) as exc:
        raise MTLFrameError(
            f"the torchrec-embedding encoder needs torchrec and FBGEMM built for torch "
            f"{torch.__version__.split('+')[0]}: {type(exc).__name__}: {str(exc)[:300]}. Install: {INSTALL}"
        ) from exc
    return torchrec


class _Tables(nn.Module):
    """The ``EmbeddingBagCollection`` and the forward DMP runs (``kjt -> {feature: [B, d]}``)."""

    def __init__(self, ebc: nn.Module) -> None:
        super().__init__()
        self.ebc = ebc

    def forward(self, kjt: Any) -> dict[str, torch.Tensor]:
        return self.ebc(kjt).to_dict()


class TorchRecEmbeddingEncoder(Encoder):
    """Embeds categorical features in TorchRec tables; outputs their concatenation, as ``embedding``.

    Args:
        features: categorical / multi-categorical columns to embed (one table each).
        dim: embedding width ``d`` per feature.
        sharding: how the tables are split across the processes of a multi-process run:
            ``table-wise`` (each table whole on one process), ``row-wise`` (each process a range of
            rows; CUDA only), ``column-wise`` (each process a range of the ``d`` columns),
            ``table-column-wise``, ``table-row-wise`` (CUDA only), or ``auto`` (TorchRec's planner
            picks per table by its cost model). One value for every table, or a mapping
            ``{feature: sharding}`` (features left out: ``auto``). Ignored in one process.
        min_partition: the narrowest column shard (TorchRec's ``min_partition``, default 32 there):
            a column-wise table is split only when ``d >= 2 * min_partition``.
        optimizer: the tables' own optimizer, applied in the backward pass (fused with FBGEMM's
            kernels when sharded): ``sgd``, ``adagrad``, ``rowwise-adagrad`` (one accumulator per
            row) or ``adam``. The recipe's ``optimizer`` trains the rest of the model.
        lr: the tables' learning rate.
        feature_info: injected (vocabulary sizes).

    Shape: batch -> ``[B, F * d]`` with ``F = len(features)``, the single-valued features first.

    Raises:
        ArgumentError: ``dim`` < 1, an unknown ``sharding`` / ``optimizer`` name, a ``sharding``
            mapping naming a feature the encoder does not have, ``lr`` <= 0, ``min_partition`` < 1.
        MTLFrameError: torchrec / FBGEMM missing or built for another torch (the install line in
            the message); at sharding time, a sharding the device cannot do (``row-wise`` on CPU)
            or a strategy other than DDP.

    Initialisation: the same random draws as the built-in ``embedding`` encoder (normal, std 0.01,
    one fused draw over the single-valued features' rows), so with the same seed both encoders
    start from the same weights. Id 0 of a categorical feature is its out-of-vocabulary row
    (learned); for a multi-categorical feature 0 is padding (ignored) and 1 out-of-vocabulary.

    Example::

        enc = TorchRecEmbeddingEncoder(["user_id", "item_id"], dim=16, sharding="table-wise",
                                       optimizer="rowwise-adagrad", lr=0.05, feature_info=info)
        out = enc(batch)  # [B, 32]
    """

    accepts = frozenset({"categorical", "multi_categorical"})
    injected = ("feature_info",)

    def __init__(self, features: list[str], dim: int = 16, sharding: str | dict[str, str] = "auto",
                 min_partition: int | None = None, optimizer: str = "sgd", lr: float = 0.01, *,
                 feature_info: Mapping[str, FeatureInfo]) -> None:
        super().__init__()
        problems = self._check({"features": features, "dim": dim, "sharding": sharding, "min_partition": min_partition,
                                "optimizer": optimizer, "lr": lr})
        if problems:
            raise ArgumentError(*problems[0])
        self.features = list(features)
        per_feature = sharding if isinstance(sharding, Mapping) else {f: sharding for f in self.features}
        self.sharding = {f: per_feature.get(f, "auto") for f in self.features}
        self.optimizer, self.lr, self.min_partition, self.dim = optimizer, float(lr), min_partition, dim
        self.single = [f for f in self.features if feature_info[f].type == "categorical"]
        self.multi = [f for f in self.features if feature_info[f].type == "multi_categorical"]
        self.key = "trec:" + ",".join(self.single)
        self.output_dim = dim * len(self.features)
        self.input_keys = ([self.key] if self.single else []) + self.multi
        cards = {f: int(feature_info[f].cardinality) for f in self.features}

        torchrec = import_torchrec()
        from torchrec.modules.embedding_configs import PoolingType

        # the built-in encoder's draws, in its order: one fused table, then each bag
        weights = {}
        if self.single:
            fused = torch.empty(sum(cards[f] for f in self.single), dim)
            nn.init.normal_(fused)                     # nn.Embedding's own init ...
            nn.init.normal_(fused, std=0.01)           # ... then FusedEmbedding's
            weights.update(zip(self.single, fused.split([cards[f] for f in self.single])))
            del fused
        for f in self.multi:
            bag = torch.empty(cards[f], dim)
            nn.init.normal_(bag)                       # nn.EmbeddingBag's own init ...
            nn.init.normal_(bag, std=0.01)             # ... then the encoder's
            weights[f] = bag
        configs = [torchrec.EmbeddingBagConfig(
            name=f"t_{f}", embedding_dim=dim, num_embeddings=cards[f], feature_names=[f],
            pooling=PoolingType.SUM if f in self.single else PoolingType.MEAN)
            for f in [*self.single, *self.multi]]
        with torch.random.fork_rng(devices=[]):       # TorchRec's own init must not move the seed
            ebc = torchrec.EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
        with torch.no_grad():
            for f in list(weights):
                ebc.embedding_bags[f"t_{f}"].weight.copy_(weights.pop(f))
        self.tables = _Tables(ebc)
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
        cls, kwargs = self._optimizer()
        apply_optimizer_in_backward(cls, self.tables.parameters(), kwargs)
        self._dmp: nn.Module | None = None       # set by configure_distributed, never a submodule
        self._keys = [f"tables.ebc.embedding_bags.t_{f}.weight" for f in [*self.single, *self.multi]]

    @staticmethod
    def _check(a: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``(parameter, message)`` for each bad argument of ``a`` (every constructor parameter)."""
        problems = []
        if a["dim"] < 1:
            problems.append(("dim", f"dim must be >= 1, got {a['dim']}"))
        sharding, features = a["sharding"], list(a["features"])
        per_feature = sharding if isinstance(sharding, Mapping) else {f: sharding for f in features}
        for f, s in per_feature.items():
            where = f"sharding.{f}" if isinstance(sharding, Mapping) else "sharding"
            if f not in features:
                problems.append((where, f"'{f}' is not a feature of this encoder ({', '.join(features)})"))
            elif s not in SHARDING:
                problem = (where, f"unknown sharding '{s}'; use one of {', '.join(SHARDING)}")
                if problem not in problems:  # one sharding for every feature: said once
                    problems.append(problem)
        if a["optimizer"] not in OPTIMIZERS:
            problems.append(("optimizer", f"unknown optimizer '{a['optimizer']}'; use one of {', '.join(OPTIMIZERS)}"))
        if not a["lr"] > 0:
            problems.append(("lr", f"lr must be > 0, got {a['lr']}"))
        if a["min_partition"] is not None and a["min_partition"] < 1:
            problems.append(("min_partition", f"min_partition must be >= 1, got {a['min_partition']}"))
        return problems

    @classmethod
    def validate_args(cls, args: Mapping[str, Any], context: Any = None) -> list[tuple[str, str]]:
        """Recipe validation without torchrec: the constructor's argument checks, and a sharding
        the recipe's machine cannot do (``row-wise`` with ``trainer.accelerator: cpu``).

        Args:
            args: every constructor parameter (the recipe's values over the defaults).
            context: mtlframe's :class:`~mtlframe.validation.ValidationContext` (its ``recipe``).

        Returns:
            ``(parameter, message)`` for each problem found; empty when the arguments are valid.
        """
        problems = cls._check(args)
        recipe = getattr(context, "recipe", None)
        trainer = recipe.get("trainer") if isinstance(recipe, Mapping) else None
        if not problems and isinstance(trainer, Mapping) and trainer.get("accelerator") == "cpu":
            sharding = args["sharding"]
            per_feature = sharding if isinstance(sharding, Mapping) else {None: sharding}
            for f, s in per_feature.items():
                if SHARDING[s][0] not in CPU_SHARDING and s != "auto":
                    problems.append(("sharding" if f is None else f"sharding.{f}", (
                        f"sharding '{s}' needs CUDA (trainer.accelerator is cpu): TorchRec's CPU kernels offer "
                        "table-wise, column-wise and table-column-wise only; use one of those or auto")))
        return problems

    # -- optimizer -------------------------------------------------------------------------
    def _optimizer(self) -> tuple[type, dict[str, Any]]:
        if self.optimizer == "sgd":
            return torch.optim.SGD, {"lr": self.lr}
        if self.optimizer == "adagrad":
            return torch.optim.Adagrad, {"lr": self.lr}
        if self.optimizer == "adam":
            return torch.optim.Adam, {"lr": self.lr}
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad
        return RowWiseAdagrad, {"lr": self.lr}

    def table_memory(self, weight: torch.Tensor) -> tuple[int, int, int, str]:
        """The memory plan's row for one table (:mod:`mtlframe.memory_plan`): ``(weight bytes,
        gradient bytes, optimizer state bytes, kind)``, whole (a run of N processes holds about
        1/N of it in each). Gradients: none held across the step (FBGEMM's fused kernels when
        sharded; in one process the in-backward step frees each table's gradient at once). State
        per weight element: SGD 0, Adagrad 1, Adam 2, row-wise Adagrad ``1 / d`` (one per row)."""
        b = weight.element_size() * weight.numel()
        per = {"sgd": 0.0, "adagrad": 1.0, "adam": 2.0, "rowwise-adagrad": 1.0 / max(weight.shape[-1], 1)}
        return b, 0, int(round(b * per[self.optimizer])), f"in-backward {self.optimizer}"

    # -- data ------------------------------------------------------------------------------
    def feature_slices(self) -> dict[str, tuple[int, int]]:
        """Each feature's ``d`` columns: the single-valued features in order, then the
        multi-categorical ones (the built-in ``embedding`` encoder's layout)."""
        return {f: (j * self.dim, (j + 1) * self.dim) for j, f in enumerate([*self.single, *self.multi])}

    def featurize(self, columns: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stack the single-valued id columns into one ``[N, F]`` int64 tensor (no offsets: one
        table per feature), one column at a time (:func:`release_column`)."""
        if not self.single:
            return {}
        n = len(columns[self.single[0]])
        ids = torch.empty((len(self.single), n), dtype=torch.int64)
        for j, f in enumerate(self.single):
            ids[j].copy_(torch.as_tensor(columns[f]))
            release_column(columns, f)
        return {self.key: ids.t()}

    def _kjt(self, batch: Mapping[str, torch.Tensor]) -> Any:
        from torchrec import KeyedJaggedTensor

        values, lengths = [], []
        if self.single:
            ids = batch[self.key]                                  # (B, F)
            values.append(ids.t().reshape(-1).long())              # feature-major, one id per row
            lengths.append(torch.ones(ids.numel(), dtype=torch.int64, device=ids.device))
        for f in self.multi:
            x = batch[f]                                           # (B, L), 0 = padding
            keep = x != 0
            values.append(x[keep].long())
            lengths.append(keep.sum(1).long())
        return KeyedJaggedTensor(keys=[*self.single, *self.multi], values=torch.cat(values),
                                 lengths=torch.cat(lengths))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tables = self._dmp if self._dmp is not None else self.tables
        out = tables(self._kjt(batch))
        parts = [out[f] for f in [*self.single, *self.multi]]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """None: the tables are stepped by their own optimizer inside the backward pass, on the
        gradient of the total loss, so a gradient-level combiner (PCGrad, ...) balances the other
        shared parameters only, in one process as when sharded (where the tables are not
        parameters at all), and never takes a full-table gradient per task."""
        return iter(())

    # -- sharding --------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        """Whether the tables are sharded across processes (after :meth:`configure_distributed`)."""
        return self._dmp is not None

    def configure_distributed(self, strategy: Any) -> None:
        """Shard the tables across the processes of ``strategy`` (a Lightning strategy whose
        process group is up): plan with TorchRec's planner under the ``sharding`` constraints,
        wrap in ``DistributedModelParallel``, copy the current weights into the shards. Does
        nothing in one process, or when already sharded.

        Raises:
            MTLFrameError: the strategy is not DDP; the evaluation splits give the processes
                different numbers of batches (:func:`check_even_evaluation`); the device cannot do
                the sharding asked for
                (``row-wise`` on CPU: TorchRec's CPU kernels offer table-, column- and
                table-column-wise only); the planner finds no plan (the message names the tables).
        """
        import torch.distributed as dist

        # Lightning restores a checkpoint's weights after this hook: the resume warning comes then
        try:                                              # (see _load_from_state_dict); not a submodule
            self.__dict__["_strategy"] = weakref.ref(strategy)
        except TypeError:                                 # an object without weak references
            self.__dict__["_strategy"] = lambda: strategy
        if self._dmp is not None or not dist.is_available() or not dist.is_initialized() \
                or dist.get_world_size() < 2:
            return
        from pytorch_lightning.strategies import DDPStrategy
        if not isinstance(strategy, DDPStrategy):
            raise MTLFrameError(f"the torchrec-embedding encoder shards its tables under Lightning's DDP strategy "
                                f"(trainer.strategy: ddp); got {type(strategy).__name__}. DMP wraps the tables "
                                "itself: FSDP / DeepSpeed would shard them a second time.")
        device = torch.device(strategy.root_device)
        world = dist.get_world_size()
        check_even_evaluation(strategy, world)
        choices = {}
        for f, s in self.sharding.items():
            types = SHARDING[s]
            if device.type == "cpu":
                if s != "auto" and types[0] not in CPU_SHARDING:
                    raise MTLFrameError(
                        f"torchrec-embedding: sharding '{s}' for '{f}' needs CUDA: TorchRec's CPU kernels offer "
                        f"table-wise, column-wise and table-column-wise only. Use one of those (or auto), "
                        f"or train on GPUs (trainer.accelerator: gpu).")
                types = tuple(t for t in types if t in CPU_SHARDING)
            choices[f"t_{f}"] = types
        torchrec = import_torchrec()  # noqa: F841
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

        kw = {} if self.min_partition is None else {"min_partition": self.min_partition}
        constraints = {t: ParameterConstraints(sharding_types=list(types), **kw) for t, types in choices.items()}
        local = int(os.environ.get("LOCAL_WORLD_SIZE", torch.cuda.device_count() if device.type == "cuda" else world))
        holder = self._modules.pop("tables")
        full = {k: v.detach() for k, v in holder.state_dict(prefix="tables.").items()}  # copied into the shards below
        unsharded = list(holder.parameters())
        sharder = EmbeddingBagCollectionSharder()
        with _quiet_torchrec():
            planner = EmbeddingShardingPlanner(
                topology=Topology(world_size=world, compute_device=device.type, local_world_size=max(1, min(local, world))),
                constraints=constraints)
            try:
                plan = planner.collective_plan(holder, [sharder], dist.GroupMember.WORLD)
            except Exception as exc:
                self._modules["tables"] = holder
                raise MTLFrameError(f"torchrec-embedding: TorchRec's planner found no sharding of the tables "
                                    f"{', '.join(choices)} over {world} processes on {device.type} with "
                                    f"{ {k: list(v) for k, v in choices.items()} }: {str(exc)[:400]}") from exc
            dmp = DistributedModelParallel(holder, device=device, plan=plan, sharders=[sharder])
        object.__setattr__(self, "_dmp", dmp)
        #: ``{table: (sharding type, [(row offset, column offset, process), ...])}``
        self.plan = {t: (str(p.sharding_type), [(*s.shard_offsets, s.placement.rank())
                                                for s in (p.sharding_spec.shards if p.sharding_spec else [])])
                     for mod_plan in plan.plan.values() for t, p in mod_plan.items()}
        self._set_full_tables(full)
        # the whole tables are no longer needed; the in-backward optimizer hooks keep the old
        # parameters alive (a reference cycle through autograd that gc does not see): free their memory
        del full
        for p in unsharded:
            p.data = torch.empty(0, dtype=p.dtype)

    def _sharded_tensors(self) -> dict[str, Any]:
        """``{state key: ShardedTensor}`` of the DMP's tables, under the unsharded keys."""
        out = {}
        for k, v in self._dmp.state_dict().items():
            for key in self._keys:
                if k.endswith(key.split("tables.", 1)[1]):
                    out[key] = v
        return out

    def _full_tables(self) -> dict[str, torch.Tensor]:
        """Each table whole (``{state key: [rows, d]}``, on CPU). Sharded: gathered from every
        process (a collective: every process must call it, as Lightning does when it writes a
        checkpoint)."""
        if self._dmp is None:
            return {k: v.detach().cpu().clone() for k, v in self.tables.state_dict(prefix="tables.").items()}
        import torch.distributed as dist

        out = {}
        for key, st in self._sharded_tensors().items():
            shards = st.local_shards()
            dev = shards[0].tensor.device if shards else torch.device(self._dmp.device)
            full = torch.zeros(tuple(st.size()), dtype=st.dtype, device=dev)
            for sh in shards:
                (r, c), (nr, nc) = sh.metadata.shard_offsets, sh.metadata.shard_sizes
                full[r:r + nr, c:c + nc] = sh.tensor.detach()
            dist.all_reduce(full)        # the shards are disjoint: the sum is the table
            out[key] = full.cpu()
        return out

    def _set_full_tables(self, full: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, st in self._sharded_tensors().items():
                w = full[key]
                for sh in st.local_shards():
                    (r, c), (nr, nc) = sh.metadata.shard_offsets, sh.metadata.shard_sizes
                    sh.tensor.copy_(w[r:r + nr, c:c + nc].to(sh.tensor.device))

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        if self._dmp is None:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, full in self._full_tables().items():
            destination[prefix + key] = full
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # noqa: ANN001
                              unexpected_keys, error_msgs):
        strategy = self.__dict__["_strategy"]() if "_strategy" in self.__dict__ else None
        if strategy is not None:   # loaded by a Lightning fit / validate / test
            warn_resumed_optimizer_state(strategy, self.optimizer)
        if self._dmp is None:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        full = {}
        for key, st in self._sharded_tensors().items():
            if prefix + key not in state_dict:
                missing_keys.append(prefix + key)
                continue
            w = state_dict[prefix + key]
            if tuple(w.shape) != tuple(st.size()):
                error_msgs.append(f"size mismatch for {prefix + key}: the checkpoint's table is {tuple(w.shape)}, "
                                  f"this model's {tuple(st.size())}")
                continue
            full[key] = w
        if len(full) == len(self._keys):
            self._set_full_tables(full)
        return None


def warn_resumed_optimizer_state(strategy: Any, optimizer: str) -> None:
    """Warn when ``fit`` resumes from a checkpoint and the tables' optimizer keeps state: the
    checkpoint holds the tables' weights, not their optimizer's accumulators, which restart."""
    trainer = getattr(getattr(strategy, "lightning_module", None), "trainer", None)
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    if optimizer == "sgd" or getattr(trainer, "ckpt_path", None) is None or str(getattr(fn, "value", fn)) != "fit":
        return
    warnings.warn(f"torchrec-embedding: resuming from {trainer.ckpt_path}: the tables' weights are restored, but "
                  f"their {optimizer} state (accumulators) is not in checkpoints and restarts from zero; the resumed "
                  "run differs from an uninterrupted one (optimizer: sgd has no state and resumes exactly)",
                  UserWarning, stacklevel=2)


def eval_batch_counts(rows: int, batch_size: int, world: int) -> list[int]:
    """Batches each of ``world`` processes evaluates when ``rows`` rows are dealt out one by one
    (mtlframe's evaluation split under DDP: process ``r`` takes rows ``r, r + world, ...``)."""
    return [-(-len(range(r, rows, world)) // batch_size) for r in range(world)]


def check_even_evaluation(strategy: Any, world: int) -> None:
    """Refuse evaluation splits that give the processes different numbers of batches.

    Sharded lookups exchange ids and embeddings between all processes in every forward pass: a
    process with one more evaluation batch than the others would wait for them forever. mtlframe
    asks the data module (``eval_batches_per_process``) how many batches each process runs: the
    in-memory one deals rows out one by one, a stream gives each data-loader worker a contiguous
    share, so the uneven splits differ between the two.

    Raises:
        MTLFrameError: naming the split, its rows, ``data.eval_batch_size`` and values that work.
    """
    module = getattr(strategy, "lightning_module", None)
    dm = getattr(getattr(module, "trainer", None), "datamodule", None)
    index, cfg = getattr(dm, "split_index", None), getattr(dm, "cfg", None)
    if not isinstance(index, Mapping) or cfg is None:
        return
    size = cfg.eval_batch_size or max(cfg.batch_size, 4096)
    # the data module knows how its loaders share a split out (in memory: row by row; a stream: a
    # contiguous range per data-loader worker); one without that method deals rows out one by one
    per_process = getattr(dm, "eval_batches_per_process", None)
    for split in ("val", "test"):
        rows = len(index.get(split, ()))

        def batches(b: int) -> list[int]:
            return per_process(split, b, world) if per_process is not None else eval_batch_counts(rows, b, world)

        counts = batches(size)
        if rows and len(set(counts)) > 1:
            ok = [b for b in range(size - 1, 0, -1) if len(set(batches(b))) == 1][:1] + \
                 [b for b in range(size + 1, rows + 1) if len(set(batches(b))) == 1][:1]
            raise MTLFrameError(
                f"torchrec-embedding: the {split} split's {rows:,} rows give the {world} processes "
                f"{'/'.join(map(str, counts))} batches of {size} (data.eval_batch_size): sharded tables need the "
                f"same number on every process, or the run hangs in the extra batch. Set data.eval_batch_size to "
                f"{' or '.join(map(str, ok))}.")


@contextlib.contextmanager
def _quiet_torchrec():
    """TorchRec's planner prints its plan table and warns about topology/estimates; keep them out."""
    log = logging.getLogger("torchrec")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)
