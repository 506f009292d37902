"""``esmm``: Entire Space Multi-task Model (conversion funnels trained on all impressions).

Ma, Zhao, Huang, Wang, Hu, Zhu, Gai. "Entire Space Multi-Task Model: An Effective Approach for
Estimating Post-Click Conversion Rate." SIGIR 2018.

ESMM couples tasks at the *prediction* level (``pCTCVR = pCTR x pCVR``), so besides the usual
``forward`` it implements the output-coupling hook :meth:`ESMM.couple`, which
:class:`mtlframe.model.MultiTaskModel` calls on the towers' outputs (training, evaluation and
prediction alike) before anything reads them.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mtlframe.backbones.funnel import FunnelBackbone
from mtlframe.layers import MLP

_MAX_LOG_PROB = -1e-7  # keep logit(p) finite: p <= 1 - 1e-7


def _binary_logit(model: str, task: str, o: torch.Tensor) -> torch.Tensor:
    if o.dim() > 1 and o.shape[-1] != 1:
        raise ValueError(f"{model} needs binary tasks (one logit per row); task '{task}' has "
                         f"outputs of shape {tuple(o.shape)}")
    return o


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(a))`` for ``a < 0``, accurate everywhere (Maechler, 2012)."""
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def logit_from_log_prob(log_p: torch.Tensor) -> torch.Tensor:
    """``logit(p) = log p - log(1 - p)`` computed from ``log p`` (``p`` capped at ``1 - 1e-7``)."""
    log_p = log_p.clamp(max=_MAX_LOG_PROB)
    return log_p - log1mexp(log_p)


class ESMM(FunnelBackbone):
    """Per-step towers whose probabilities multiply along a conversion funnel.

    The backbone names the funnel's stages (``click: ctr, conversion: ctcvr``, or ``funnel: [...]``
    for more; never the order of ``tasks:``), each a binary task. Stage ``k`` is trained on the
    entire space with the target "stages ``1..k`` all happened" (for the conversion stage, click
    AND conversion, whatever the conversion column holds on un-clicked rows; see
    :mod:`mtlframe.backbones.funnel`). The tower of step ``k``
    predicts the *conditional* probability ``q_k = P(step k | step k-1)`` (for ``ctcvr``, that is
    pCVR); :meth:`couple` turns the towers' logits into the entire-space probabilities

    .. math:: p_k = \\prod_{j \\le k} q_j, \\qquad \\text{e.g. } pCTCVR = pCTR \\times pCVR

    returned as logits, so the ordinary binary cross-entropy on ``p_k`` trains every step on all
    impressions (the paper's fix for sample-selection bias and data sparsity).

    The embedding sharing of the paper is the encoders' (shared by construction); this backbone
    adds optional per-step MLPs in front of the towers (``hidden=[]``, the default, passes ``x``
    through so the towers are the paper's CTR and CVR networks).

    Args:
        hidden: widths of an MLP per task in front of its tower (``[]``: none).
        dropout: dropout in those MLPs.
        activation: activation name.
        batch_norm: batch normalization in those MLPs.
        click: the click stage's task (with ``conversion``: a two-stage funnel).
        conversion: the conversion stage's task; trained on click AND conversion.
        funnel: every stage's task in funnel order (instead of ``click``/``conversion``).
        strict: a row whose conversion is 1 and click 0 is a data error (default: a warning
            with the count; the row's conversion target is 0).
        input_dim, task_names, task_types: injected.

    Shape: ``x [B, D] -> {task: [B, H]}`` (``H = hidden[-1]`` or ``D``);
    ``couple({task: [B] or [B, 1]}) -> {task: same shape}``.

    Raises:
        ArgumentError: stages not named, an unknown task, a task left out, fewer than two stages,
            a stage that is not a binary task (:func:`~mtlframe.backbones.funnel.resolve_stages`).
        ValueError: (in :meth:`couple`) a task whose tower does not output one logit per row.

    Example::

        esmm = ESMM(click="ctr", conversion="ctcvr", input_dim=32, task_names=["ctr", "ctcvr"])
        h = esmm(torch.randn(8, 32))                       # {"ctr": [8, 32], "ctcvr": [8, 32]}
        tower_logits = {t: towers[t](h[t]) for t in h}     # ctr -> logit pCTR, ctcvr -> logit pCVR
        logits = esmm.couple(tower_logits)                 # ctcvr -> logit(pCTR * pCVR)
    """

    def __init__(self, hidden: list[int] = [], dropout: float = 0.0, activation: str = "relu",  # noqa: B006
                 batch_norm: bool = False, click: str | None = None, conversion: str | None = None,
                 funnel: list[str] | None = None, strict: bool = False, *, input_dim: int,
                 task_names: list[str], task_types: dict[str, str] | None = None) -> None:
        super().__init__()
        self._init_funnel(click, conversion, funnel, strict, task_names, task_types)
        self.nets = nn.ModuleDict(
            {t: MLP(input_dim, hidden, dropout, activation, batch_norm) for t in self.task_names})
        self.output_dims = {t: self.nets[t].output_dim for t in self.task_names}

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """The MLPs of every step but the last: step ``k`` feeds ``p_k, p_{k+1}, ...``."""
        return itertools.chain(*(self.nets[t].parameters() for t in self.funnel[:-1]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: self.nets[t](x) for t in self.task_names}      # {task: (B, H)}

    def couple(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Towers' conditional logits -> entire-space logits ``logit(prod_{j<=k} q_j)``.

        Computed in log space (``log p_k = sum_j log sigmoid(o_j)``), so it stays finite for very
        small probabilities. The first step's logit is returned unchanged.

        Args:
            outputs: ``{task: [B] or [B, 1]}`` tower logits; every funnel task must be present.

        Returns:
            ``{task: logit}`` with the same keys and shapes.
        """
        name = type(self).__name__
        out = dict(outputs)
        log_p = None
        for k, t in enumerate(self.funnel):
            log_q = F.logsigmoid(_binary_logit(name, t, outputs[t]))  # (B,)
            log_p = log_q if log_p is None else log_p + log_q     # (B,)  log p_k
            if k > 0:
                out[t] = logit_from_log_prob(log_p)               # (B,)
        return out

    def conditional_priors(self, priors: Mapping[str, float]) -> dict[str, float]:
        """Entire-space base rates (log-odds, as for ``init_output_bias``) -> the towers' own.

        Step ``k``'s tower predicts ``q_k = p_k / p_{k-1}``, so its starting bias should be
        ``logit(rate_k / rate_{k-1})``, not ``logit(rate_k)`` (e.g. CTR 5 %, CTCVR 0.1 % -> the
        CVR tower starts at 2 %). Tasks missing from ``priors`` are left out.

        Args:
            priors: ``{task: logit(base rate of the task's label)}``.

        Returns:
            ``{task: logit(conditional base rate)}`` (the first step's unchanged).
        """
        out: dict[str, float] = {}
        for k, t in enumerate(self.funnel):
            if t not in priors:
                continue
            prev = self.funnel[k - 1] if k > 0 else None
            if prev is None or prev not in priors:
                out[t] = float(priors[t])
                continue
            log_q = F.logsigmoid(torch.tensor(float(priors[t]), dtype=torch.float64)) - \
                F.logsigmoid(torch.tensor(float(priors[prev]), dtype=torch.float64))
            out[t] = float(logit_from_log_prob(log_q))
        return out

    def probabilities(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Entire-space probabilities ``p_k = q_1 * ... * q_k`` as a plain product of sigmoids.

        Args:
            outputs: ``{task: [B] or [B, 1]}`` tower logits.

        Returns:
            ``{task: p_k}``, same shapes (``sigmoid`` of :meth:`couple`, up to rounding).
        """
        probs, p = {}, None
        for t in self.funnel:
            q = torch.sigmoid(_binary_logit(type(self).__name__, t, outputs[t]))  # (B,)
            p = q if p is None else p * q
            probs[t] = p
        return probs

    def conditional_probabilities(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The towers' own probabilities ``q_k = P(step k | step k-1)`` (pCTR, pCVR, ...)."""
        return {t: torch.sigmoid(outputs[t]) for t in self.funnel}
