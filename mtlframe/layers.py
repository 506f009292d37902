"""Shared building blocks: MLP, softmax gate, fused embedding table, PLE extraction layer.

Every architecture composes these instead of re-implementing them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
                "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "sigmoid": nn.Sigmoid}


def activation(name: str) -> nn.Module:
    """Build an activation by name (``relu``, ``gelu``, ``silu``, ``tanh``, ``leaky_relu``, ``prelu``,
    ``sigmoid``).

    Raises:
        ValueError: unknown name (the list of valid ones is in the message).
    """
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation '{name}'; choose one of {', '.join(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    """A stack of ``Linear -> [BatchNorm] -> activation -> [Dropout]`` blocks.

    Args:
        input_dim: width of the input ``D``.
        hidden: widths of the hidden layers; ``[]`` gives the identity.
        dropout: dropout probability after each block.
        activation_name: activation after each block.
        batch_norm: add ``BatchNorm1d`` before the activation.
        output_dim: if set, a final plain ``Linear`` to this width (no activation).

    Shape: ``[B, D] -> [B, output_dim or hidden[-1] or D]``.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int] = (), dropout: float = 0.0,
                 activation_name: str = "relu", batch_norm: bool = False,
                 output_dim: int | None = None) -> None:
        super().__init__()
        bad = [h for h in hidden if int(h) < 1]
        if bad or (output_dim is not None and output_dim < 1):
            raise ValueError(f"layer widths must be positive integers, got hidden={list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(activation_name))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if output_dim is not None:
            layers.append(nn.Linear(width, output_dim))
            width = output_dim
        self.net = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _expert_softmax(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """``softmax(x W^T + b)`` over each group of ``E = K / groups`` logits: ``[B, D] -> [B, groups, E]``.

    The logits are computed as ``[groups, E, B]`` and normalized along the experts axis with the
    batch innermost: on CPU a softmax along a last axis of a handful of experts is one short
    row at a time (about 80 ns a row forward, more backward), while this layout vectorizes over
    the batch, about 8x faster forward and backward for the same values.
    """
    logits = torch.addmm(bias.unsqueeze(1), weight, x.t())           # (K, B)
    w = torch.softmax(logits.view(groups, -1, x.shape[0]), dim=1)    # (groups, E, B)
    return w.permute(2, 0, 1).contiguous()                          # (B, groups, E)


class Gate(nn.Module):
    """Softmax gate over ``E`` experts: ``g(x) = softmax(W x)`` (Ma et al., KDD 2018).

    Shape: ``x [B, D] -> weights [B, E]`` (rows sum to 1).
    """

    def __init__(self, input_dim: int, num_experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            return torch.softmax(self.linear(x), dim=-1)
        return _expert_softmax(x, self.linear.weight, self.linear.bias, 1)[:, 0]


def mix_experts(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of expert outputs.

    Args:
        weights: ``[B, E]`` gate weights.
        experts: ``[B, E, H]`` stacked expert outputs.

    Returns:
        ``[B, H]``.
    """
    return (weights.unsqueeze(-1) * experts).sum(dim=1)        # (B, E, 1) * (B, E, H) -> (B, H)


def gated_mixtures(gates: Sequence[Gate], x: torch.Tensor,
                   experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Several softmax gates reading the same input, each mixing the same experts (MMoE).

    The gates' logits come from one matrix product (their weights concatenated) and the mixtures
    from one batched product, instead of a product, a softmax and a weighted sum per gate: the
    same values, and with two or more gates about 2x faster forward and backward on CPU. (With a
    single gate :func:`mix_experts` is the faster mixture: a batched product of ``[1, E]`` rows
    is slow on CPU.)

    Args:
        gates: ``T`` gates over the same ``E`` experts.
        x: ``[B, D]`` their input.
        experts: ``[B, E, H]`` expert outputs.

    Returns:
        ``(weights [B, T, E], mixtures [B, T, H])``; ``weights[:, t]`` is ``gates[t](x)``.
    """
    if len(gates) == 1:
        w = gates[0](x)
        return w.unsqueeze(1), mix_experts(w, experts).unsqueeze(1)
    weight = torch.cat([g.linear.weight for g in gates])           # (T*E, D)
    bias = torch.cat([g.linear.bias for g in gates])               # (T*E,)
    w = _expert_softmax(x, weight, bias, len(gates))               # (B, T, E)
    return w, torch.bmm(w, experts)                                # (B, T, E) @ (B, E, H) -> (B, T, H)


class FusedEmbedding(nn.Module):
    """One embedding table for ``F`` categorical features, indexed with per-feature offsets.

    A single lookup replaces ``F`` small ones. Ids must already include the offsets
    (see :meth:`offsets`); id ``offset_f + 0`` is feature ``f``'s out-of-vocabulary row.

    Args:
        cardinalities: rows per feature.
        dim: embedding width ``d``.
        sparse: give the table sparse gradients (only the looked-up rows; needs an optimizer that
            takes them, see :mod:`mtlframe.optim`).

    Shape: ``ids [B, F] (int32 or int64) -> [B, F, d]``.
    """

    def __init__(self, cardinalities: Sequence[int], dim: int, sparse: bool = False) -> None:
        super().__init__()
        self.cardinalities = [int(c) for c in cardinalities]
        self.dim = dim
        self.table = nn.Embedding(sum(self.cardinalities), dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=0.01)
        offs = torch.tensor([0, *self.cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offs, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.table.sparse or ids.device.type != "cpu":
            return self.table(ids)
        # The same lookup; on CPU the backward of ``index_select`` (one ``index_add``) is ~3x faster
        # than the embedding's dense backward, which adds the gradient one looked-up row at a time.
        flat = self.table.weight.index_select(0, ids.reshape(-1).long())    # (B*F, d)
        return flat.view(*ids.shape, self.dim)


class ExtractionOutput(NamedTuple):
    """What one :class:`ExtractionLayer` returns.

    Attributes:
        tasks: ``{task: [B, H]}`` gate-mixed representation of each task.
        shared: ``[B, H]`` output of the shared gate, or ``None`` when the layer has none.
        task_gates: ``{task: [B, E_t]}`` each task gate's weights (graph attached).
        shared_gate: ``[B, E_s]`` the shared gate's weights, or ``None``.
    """

    tasks: dict[str, torch.Tensor]
    shared: torch.Tensor | None
    task_gates: dict[str, torch.Tensor]
    shared_gate: torch.Tensor | None


class ExtractionLayer(nn.Module):
    """One extraction network of PLE: task-specific experts, shared experts and softmax gates.

    Tang, Liu, Zhao, Gong. "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
    Model for Personalized Recommendations." RecSys 2020 (CGC is one such layer, PLE stacks them).

    Task ``t`` has ``m_t`` experts ``E_t`` reading its own input ``x_t``; ``m_s`` shared experts
    ``E_s`` read the shared input ``x_s``. Task ``t``'s gate reads ``x_t`` and mixes its own and
    the shared experts; the optional shared gate reads ``x_s`` and mixes every expert:

    .. math::
        h_t = g_t(x_t)^\\top [E_t(x_t); E_s(x_s)], \\qquad
        h_s = g_s(x_s)^\\top [E_1(x_1); \\dots; E_T(x_T); E_s(x_s)]

    With ``all_forward=True`` (STEM's All-Forward Gate, Su et al., AAAI 2024) task ``t``'s gate
    mixes *every* expert, ``[E_1; ...; E_T; E_s]``, with a stop-gradient on the other tasks'
    experts, so task ``t``'s loss trains only its own and the shared experts.

    Expert order inside a gate (the columns of its weights): task gate ``[own experts, shared
    experts]`` (``all_forward``: ``[task 1 experts, ..., task T experts, shared experts]``); shared
    gate ``[task 1 experts, ..., task T experts, shared experts]``, tasks in ``task_names`` order.

    Args:
        input_dim: width of every input ``x_t`` and ``x_s``.
        task_names: the tasks.
        num_task_experts: experts per task ``m_t`` (>= 0).
        num_shared_experts: shared experts ``m_s`` (>= 0; ``m_t + m_s >= 1``).
        expert_hidden: widths of each expert MLP; the last is ``H``.
        dropout, activation_name, batch_norm: passed to each expert :class:`MLP`.
        shared_output: build the shared gate and return ``h_s`` (PLE's non-final levels).
        all_forward: STEM's All-Forward task gates (see above).

    Shape: ``({task: [B, D]}, [B, D]) -> ExtractionOutput`` with ``[B, H]`` representations.

    Raises:
        ValueError: negative expert counts, no expert for a gate, or empty ``expert_hidden``.
    """

    def __init__(self, input_dim: int, task_names: Sequence[str], num_task_experts: int,
                 num_shared_experts: int, expert_hidden: Sequence[int], dropout: float = 0.0,
                 activation_name: str = "relu", batch_norm: bool = False,
                 shared_output: bool = False, all_forward: bool = False) -> None:
        super().__init__()
        if num_task_experts < 0 or num_shared_experts < 0:
            raise ValueError("num_task_experts and num_shared_experts must be >= 0, got "
                             f"{num_task_experts} and {num_shared_experts}")
        if num_task_experts + num_shared_experts < 1:
            raise ValueError("an extraction layer needs at least one expert per gate: "
                             "num_task_experts + num_shared_experts must be >= 1")
        if not expert_hidden:
            raise ValueError("expert_hidden must list at least one width")
        if any(int(h) < 1 for h in expert_hidden):
            raise ValueError(f"expert_hidden widths must be positive integers, got {list(expert_hidden)}")
        self.task_names = list(task_names)
        self.all_forward = all_forward

        def expert() -> MLP:
            return MLP(input_dim, expert_hidden, dropout, activation_name, batch_norm)

        self.task_experts = nn.ModuleDict(
            {t: nn.ModuleList(expert() for _ in range(num_task_experts)) for t in self.task_names})
        self.shared_experts = nn.ModuleList(expert() for _ in range(num_shared_experts))
        n_all = num_task_experts * len(self.task_names) + num_shared_experts
        n_task_gate = n_all if all_forward else num_task_experts + num_shared_experts
        self.task_gates = nn.ModuleDict({t: Gate(input_dim, n_task_gate) for t in self.task_names})
        self.shared_gate = Gate(input_dim, n_all) if shared_output else None
        self.output_dim = int(expert_hidden[-1])

    def forward(self, task_inputs: Mapping[str, torch.Tensor], shared_input: torch.Tensor) -> ExtractionOutput:
        def run(experts: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
            if len(experts) == 0:
                return x.new_zeros(x.shape[0], 0, self.output_dim)
            return torch.stack([e(x) for e in experts], dim=1)     # (B, m, H)

        own = {t: run(self.task_experts[t], task_inputs[t]) for t in self.task_names}  # (B, m_t, H)
        shared = run(self.shared_experts, shared_input)             # (B, m_s, H)
        outs, weights = {}, {}
        for t in self.task_names:
            if self.all_forward:
                pool = [own[s] if s == t else own[s].detach() for s in self.task_names]
                experts = torch.cat([*pool, shared], dim=1)        # (B, T*m_t + m_s, H)
            else:
                experts = torch.cat([own[t], shared], dim=1)       # (B, m_t + m_s, H)
            w = self.task_gates[t](task_inputs[t])                 # (B, E_t)
            weights[t] = w
            outs[t] = mix_experts(w, experts)                      # (B, H)
        shared_out = shared_w = None
        if self.shared_gate is not None:
            experts = torch.cat([*(own[t] for t in self.task_names), shared], dim=1)  # (B, E_s, H)
            shared_w = self.shared_gate(shared_input)              # (B, E_s)
            shared_out = mix_experts(shared_w, experts)            # (B, H)
        return ExtractionOutput(outs, shared_out, weights, shared_w)


class ExpertBank(nn.Module):
    """``E`` independent expert MLPs evaluated together, as in MMoE / OMoE / DSelect-K.

    All experts read the same input, so their first layers form one ``Linear(D, E * H_1)`` (one
    matrix product instead of ``E``); deeper layers are one batched product over ``[E, H, H']``
    weights. Mathematically identical to ``E`` separate :class:`MLP` s with the same
    initialization distribution, and several times fewer kernel launches on CPU.

    Args:
        num_experts: ``E``.
        input_dim: ``D``.
        hidden: widths of each expert's layers; the last is ``H``.
        dropout, activation_name, batch_norm: as in :class:`MLP` (batch norm keeps statistics per
            expert and unit; a ``prelu`` slope is shared by the experts of a layer).

    Shape: ``x [B, D] -> [B, E, H]``. ``bank[i](x)`` gives expert ``i`` alone, ``[B, H]``.
    """

    def __init__(self, num_experts: int, input_dim: int, hidden: Sequence[int], dropout: float = 0.0,
                 activation_name: str = "relu", batch_norm: bool = False) -> None:
        super().__init__()
        if num_experts < 1 or not hidden:
            raise ValueError("ExpertBank needs num_experts >= 1 and at least one hidden width")
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"expert_hidden widths must be positive integers, got {list(hidden)}")
        self.num_experts = num_experts
        self.widths = [int(h) for h in hidden]
        e = num_experts
        self.first = nn.Linear(input_dim, e * self.widths[0])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialization, per expert
            self.weights.append(nn.Parameter(torch.empty(e, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(e, 1, fan_out).uniform_(-bound, bound)))
        self.norms = nn.ModuleList(nn.BatchNorm1d(e * h) for h in self.widths) if batch_norm else None
        self.acts = nn.ModuleList(activation(activation_name) for _ in self.widths)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.output_dim = self.widths[-1]

    def _post(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        if self.norms is not None:
            h = self.norms[layer](h)
        h = self.acts[layer](h)
        return self.dropout(h) if self.dropout is not None else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, e = x.shape[0], self.num_experts
        h = self._post(self.first(x), 0)                           # (B, E*H1)
        if len(self.widths) == 1:
            return h.view(b, e, self.widths[0])                    # (B, E, H)
        h = h.view(b, e, self.widths[0]).transpose(0, 1)           # (E, B, H1)
        for i, (w, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(bias, h, w)                          # (E, B, H_{i+1})
            width = h.shape[-1]
            h = self._post(h.transpose(0, 1).reshape(b, e * width), i + 1).view(b, e, width).transpose(0, 1)
        return h.transpose(0, 1)                                   # (B, E, H)

    def __getitem__(self, index: int):
        """Expert ``index`` as a callable ``x [B, D] -> [B, H]`` (for inspection and tests)."""
        if not -self.num_experts <= index < self.num_experts:
            raise IndexError(f"expert {index} out of range for {self.num_experts} experts")
        return lambda x: self(x)[:, index]

    def __len__(self) -> int:
        return self.num_experts
