"""``dselect-k``: mixture of experts with differentiable top-k selection gates.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi. "DSelect-k: Differentiable
Selection in the Mixture of Experts with Applications to Multi-Task Learning." NeurIPS 2021.
"""
from __future__ import annotations

import torch
from torch import nn

from mtlframe.backbones.mmoe import MMoE


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """The cubic smooth-step of DSelect-k (Eq. 3): 0 below ``-gamma/2``, 1 above ``gamma/2``.

    .. math:: S(t) = -\\frac{2}{\\gamma^3} t^3 + \\frac{3}{2\\gamma} t + \\frac{1}{2}
              \\quad \\text{for } |t| \\le \\gamma / 2

    Continuously differentiable; its gradient is exactly zero outside ``[-gamma/2, gamma/2]``,
    which is what lets a selector become exactly binary during training.

    Shape: any, elementwise.
    """
    inner = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t),
                       torch.where(t >= gamma / 2, torch.ones_like(t), inner))


class DSelectKGate(nn.Module):
    """One task's DSelect-k gate: ``k`` binary-encoded single-expert selectors, softmax-combined.

    With ``m = ceil(log2 E)`` bits, selector ``i`` has ``z^{(i)} \\in R^m`` and gives code ``c``
    the weight ``r_c = prod_j S(z_j)^{b_j(c)} (1 - S(z_j))^{1 - b_j(c)}`` (a product distribution
    over ``2^m`` codes). The gate is

    .. math:: q = \\sum_{i=1}^{k} \\mathrm{softmax}(\\alpha)_i \\, r(z^{(i)})

    so rows sum to 1, and once every ``S(z_j)`` is 0 or 1 each selector picks one expert and ``q``
    has at most ``k`` non-zeros. When ``E`` is not a power of two, code ``c >= E`` selects expert
    ``c mod E`` (our choice: the weights stay a distribution over real experts, with no renormalising).

    ``per_example=False`` (the paper's static gate): ``z`` and ``alpha`` are parameters.
    ``per_example=True``: they are linear functions of the input ``x``.

    Shape: ``x [B, D] -> [B, E]``.
    """

    def __init__(self, input_dim: int, num_experts: int, k: int, gamma: float,
                 per_example: bool = False) -> None:
        super().__init__()
        self.num_experts, self.k, self.gamma, self.per_example = num_experts, k, gamma, per_example
        bits = (num_experts - 1).bit_length()                      # m = ceil(log2 E)
        codes = torch.arange(2**bits)
        # code_bits[c, j] = j-th bit of code c; fold[c, e] = 1 if code c selects expert e
        self.register_buffer("code_bits", ((codes[:, None] >> torch.arange(bits)) & 1).float(),
                             persistent=False)                      # (2^m, m)
        self.register_buffer("fold", nn.functional.one_hot(codes % num_experts, num_experts).float(),
                             persistent=False)                      # (2^m, E)
        self.bits = bits
        scale = gamma / 100  # start every selector near the uniform distribution
        if per_example:
            self.z = nn.Linear(input_dim, k * bits)
            self.alpha = nn.Linear(input_dim, k)
            for lin in (self.z, self.alpha):
                nn.init.uniform_(lin.weight, -scale, scale)
                nn.init.zeros_(lin.bias)
        else:
            self.z = nn.Parameter(torch.empty(k, bits).uniform_(-scale, scale))
            self.alpha = nn.Parameter(torch.zeros(k))

    def selectors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each selector's distribution over experts and the selector weights.

        Returns ``(r [B, k, E], softmax(alpha) [B, k])``.
        """
        b = x.shape[0]
        if self.per_example:
            z = self.z(x).view(b, self.k, self.bits)               # (B, k, m)
            alpha = self.alpha(x)                                  # (B, k)
        else:
            z = self.z.expand(b, -1, -1)                           # (B, k, m)
            alpha = self.alpha.expand(b, -1)                       # (B, k)
        s = smooth_step(z, self.gamma).unsqueeze(2)                # (B, k, 1, m)
        per_bit = self.code_bits * s + (1 - self.code_bits) * (1 - s)  # (B, k, 2^m, m)
        r_codes = per_bit.prod(dim=-1)                             # (B, k, 2^m)
        r = r_codes @ self.fold                                    # (B, k, E)
        return r, torch.softmax(alpha, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, w = self.selectors(x)                                   # (B, k, E), (B, k)
        return (w.unsqueeze(-1) * r).sum(dim=1)                    # (B, E)


class DSelectK(MMoE):
    """``E`` shared expert MLPs; each task mixes them with its own DSelect-k gate (see :class:`DSelectKGate`).

    .. math:: h_t = \\sum_{e=1}^{E} q_t(x)_e \\, f_e(x)

    The gate converges to using at most ``k`` experts per task (exactly sparse, unlike a
    softmax gate), at which point the unused experts cost nothing for that task. The paper adds an
    entropy regulariser to speed up that convergence; it is not included here.

    Args:
        num_experts: number of experts ``E``.
        k: experts each task's gate selects (``1 <= k <= E``).
        gamma: width of the smooth-step's transition region (> 0; the paper uses 1 to 10).
        expert_hidden: widths of each expert MLP; the last is ``H``.
        per_example: input-dependent gates instead of static ones.
        dropout: dropout inside experts.
        activation: activation name.
        batch_norm: batch normalization inside experts.
        input_dim, task_names: injected.

    Shape: ``x [B, D] -> {task: [B, H]}``; after a forward, ``gate_weights[task]`` is ``[B, E]``
    (rows sum to 1; at most ``k`` non-zeros once the selectors are binary).

    Raises:
        ValueError: ``num_experts < 1``, ``k`` outside ``[1, num_experts]``, ``gamma <= 0`` or
            empty ``expert_hidden``.

    Example::

        ds = DSelectK(num_experts=8, k=2, expert_hidden=[64], input_dim=32, task_names=["ctr", "cvr"])
        out = ds(torch.randn(8, 32))  # {"ctr": [8, 64], "cvr": [8, 64]}
    """

    def __init__(self, num_experts: int = 8, k: int = 2, gamma: float = 1.0,
                 expert_hidden: list[int] = [64], per_example: bool = False, dropout: float = 0.0,  # noqa: B006
                 activation: str = "relu", batch_norm: bool = False, *, input_dim: int,
                 task_names: list[str]) -> None:
        if not 1 <= k <= num_experts:
            raise ValueError(f"k must be between 1 and num_experts={num_experts}, got {k}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        super().__init__(num_experts, expert_hidden, dropout, activation, batch_norm,
                         input_dim=input_dim, task_names=task_names)
        # the experts and the mixing are MMoE's; only the gates differ
        self.gates = nn.ModuleDict(
            {t: DSelectKGate(input_dim, num_experts, k, gamma, per_example) for t in self.task_names})
