"""``MultiTaskModel``: encoders -> concat -> backbone -> towers. Plain ``nn.Module``, no training code.

Used by the Lightning system (:mod:`mtlframe.module`) and by ``predict`` (which needs no Lightning).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from mtlframe.backbones.base import TaskInputs
from mtlframe.features import TaskSpec


class MultiTaskModel(nn.Module):
    """The composed multi-task network.

    Args:
        encoders: feature encoders; their outputs are concatenated into ``x [B, D]``. Encoders
            with per-task parameters (``per_task``, e.g. ``embedding`` with ``task_specific``)
            also give each task its own input ``[B, D]`` (:class:`~mtlframe.backbones.base.TaskInputs`).
        backbone: maps ``x`` to ``{task: h_t [B, H_t]}``; with per-task inputs it must accept them
            (``accepts_task_inputs``) and is called ``backbone(x, {task: [B, D]})``.
        towers: one tower per task, ``h_t -> [B, out_dim]``.
        tasks: the task specs, in recipe order.
        shared: which parameters count as shared by the tasks (what gradient-level combiners
            balance): ``encoders+backbone`` (default: every encoder parameter plus the backbone's
            :meth:`~mtlframe.backbones.base.Backbone.shared_parameters`), ``backbone`` (only the
            latter: much cheaper with large embedding tables, whose gradients are then the plain
            sum over tasks), or ``encoders``.

        retrieval: ``{task: TwoTower}`` heads of the ``retrieval`` tasks (:mod:`mtlframe.retrieval`):
            they read the encoders' output directly (the backbone and ``towers`` serve the other tasks).
        item_columns: ``[D_i]`` columns of ``x`` holding the item-side features (``ranking.item_features``),
            for :meth:`compose`; ``None`` without a ``ranking`` section.

    ``forward(batch)`` returns ``{task: output}`` with output ``[B]`` (binary logits, regression
    values, a retrieval task's score of the row's own user and item) or ``[B, C]`` (multiclass logits).

    Raises:
        ValueError: bad ``shared``; an encoder has per-task parameters for a task the model does
            not have, or the backbone does not read per-task inputs.
    """

    def __init__(self, encoders: Sequence[nn.Module], backbone: nn.Module, towers: Mapping[str, nn.Module],
                 tasks: Sequence[TaskSpec], shared: str = "encoders+backbone",
                 retrieval: Mapping[str, nn.Module] | None = None,
                 item_columns: torch.Tensor | None = None) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.backbone = backbone
        self.towers = nn.ModuleDict(dict(towers))
        #: ``{task: TwoTower}`` of the retrieval tasks (:mod:`mtlframe.retrieval`)
        self.retrieval = nn.ModuleDict(dict(retrieval or {}))
        # the item-side columns of x (``ranking.item_features``), for :meth:`compose`
        self.register_buffer("item_columns", None if item_columns is None else torch.as_tensor(item_columns).long(),
                             persistent=False)
        self.tasks = list(tasks)
        if shared not in ("encoders+backbone", "backbone", "encoders"):
            raise ValueError(f"shared must be 'encoders+backbone', 'backbone' or 'encoders', got {shared!r}")
        self.shared = shared
        self._squeeze = {t.name: t.output_dim == 1 for t in self.tasks}
        names = [t.name for t in self.tasks]
        per_task = {t for enc in self.encoders for t in getattr(enc, "per_task", ())}
        if per_task - set(names):
            raise ValueError(f"encoders have per-task parameters for {sorted(per_task - set(names))}, "
                             f"which are not tasks of the model ({', '.join(names)})")
        if per_task and not getattr(backbone, "accepts_task_inputs", False):
            raise ValueError(f"encoders have per-task parameters (for {', '.join(sorted(per_task))}) but the "
                             f"backbone {type(backbone).__name__} reads only the shared input")
        self.task_inputs = bool(per_task)
        self._task_names = names

    def encode(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | TaskInputs:
        """The shared input ``x [B, D]``; with per-task encoders, :class:`TaskInputs` (``x`` and
        ``{task: [B, D]}``)."""
        parts = [enc(batch) for enc in self.encoders]             # each (B, d_i)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, D)
        if not self.task_inputs:
            return x
        own = [enc.forward_tasks(batch) if getattr(enc, "per_task", ()) else {} for enc in self.encoders]
        tasks = {}
        for t in self._task_names:
            tparts = [o.get(t, p) for o, p in zip(own, parts)]     # each (B, d_i)
            tasks[t] = torch.cat(tparts, dim=1) if len(tparts) > 1 else tparts[0]  # (B, D)
        return TaskInputs(x, tasks)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.forward_from(self.encode(batch))

    def forward_from(self, x: torch.Tensor | TaskInputs, vectors: dict | None = None) -> dict[str, torch.Tensor]:
        """Run backbone, towers and output coupling on :meth:`encode`'s output.

        ``vectors``: when a dict is given, each retrieval task's ``(u [B, d], v [B, d])`` is stored
        in it (the training loss reuses them)."""
        if isinstance(x, TaskInputs):
            hidden = self.backbone(x.shared, x.tasks)              # {task: (B, H_t)}
        else:
            hidden = self.backbone(x)                              # {task: (B, H_t)}
        out = {}
        for name, tower in self.towers.items():
            y = tower(hidden[name])                                # (B, out_dim)
            out[name] = y.squeeze(-1) if self._squeeze[name] else y
        out = self.backbone.couple(out)
        for name, head in self.retrieval.items():
            u, v = head.user_vectors(x), head.item_vectors(x)      # (B, d), (B, d)
            out[name] = head.pair_logits(u, v)                     # (B,)
            if vectors is not None:
                vectors[name] = (u, v)
        return out

    def compose(self, x_user: torch.Tensor | TaskInputs, x_item: torch.Tensor | TaskInputs) -> torch.Tensor | TaskInputs:
        """Encodings of (user row, item row) pairs: ``x_user`` with the item-side columns taken from
        ``x_item`` (both ``[B, D]`` row-aligned, or :class:`TaskInputs`). Used to score items a
        user never interacted with (full ranking through the ranking tasks, ``recommend``).

        Features that belong to neither side (context) come from the user row.

        Raises:
            ValueError: the model has no item side (the recipe has no ``ranking`` section).
        """
        if self.item_columns is None:
            raise ValueError("the model has no item side: add a `ranking:` section (user_features, item_features) "
                             "to the recipe")
        cols = self.item_columns

        def mix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            out = a.clone()
            out[:, cols] = b.index_select(1, cols)
            return out

        if isinstance(x_user, TaskInputs):
            return TaskInputs(mix(x_user.shared, x_item.shared),
                              {t: mix(v, x_item.tasks[t]) for t, v in x_user.tasks.items()})
        return mix(x_user, x_item)

    def compile_parts(self, **options) -> None:
        """``torch.compile`` every encoder, the backbone and every tower in place
        (``nn.Module.compile``; ``options`` go to ``torch.compile``).

        Training calls these parts directly (:meth:`encode`, :meth:`forward_from`), so they are
        what is compiled rather than this module's own ``forward``; compiling in place keeps the
        parameter names, so checkpoints load into an uncompiled model.
        """
        for part in (*self.encoders, self.backbone, *self.towers.values(), *self.retrieval.values()):
            part.compile(**options)

    def init_output_bias(self, values: Mapping[str, float]) -> None:
        """Set each named task's final output bias (regression: the training label mean;
        binary: its log-odds), so training starts from the base rate rather than 0. A backbone
        whose towers predict conditional quantities converts them (``conditional_priors``)."""
        convert = getattr(self.backbone, "conditional_priors", None)
        if convert is not None:
            values = convert(dict(values))
        for name, value in values.items():
            last = None
            for m in self.towers[name].modules():
                if isinstance(m, nn.Linear):
                    last = m
            if last is not None and last.bias is not None and last.out_features == 1:
                with torch.no_grad():
                    last.bias.fill_(float(value))

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters shared by the tasks, as chosen by ``shared`` (recipe key ``model.shared``).

        An encoder's per-task parameters (``task_specific`` tables) are never listed."""
        if self.shared != "backbone":
            for enc in self.encoders:
                yield from getattr(enc, "shared_parameters", enc.parameters)()
        if self.shared != "encoders":
            yield from self.backbone.shared_parameters()
