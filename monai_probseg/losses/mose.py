# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Optimal-transport matching loss of the Mixture of Stochastic Experts.

Gao, Z., Chen, Y., Zhang, C., He, X. (2023) Modeling Multimodal Aleatoric Uncertainty in Segmentation with Mixture
of Stochastic Experts. ICLR 2023.

The model gives ``N = K * S`` weighted samples per image (``S`` samples of each of ``K`` experts, sample weight
``u_n = w_k / S`` from the gate); the image has ``M`` annotations with weights ``v`` (uniform ``1 / M`` unless
given). With ``c_nm`` the cost of sample ``n`` against annotation ``m`` (``1 - IoU``), the loss is

    ``L = sum_nm P*_nm c_nm + beta * KL(P* 1_M || u)``,

    ``P* = argmin_P <P, c>  s.t.  P >= 0,  P^T 1_N = v,  P 1_M <= gamma``,

i.e. an optimal transport of the annotations' mass onto the samples in which the samples' marginal is not fixed
to the gate's weights but only capped (each sample takes at most ``gamma`` of the mass; ``gamma = 1`` sends each
annotation to its nearest sample). The plan is a constant (no gradient flows through the solver): the first
term trains the experts to match the annotations they were given, the second trains the gate's weights toward the
mass the plan gave each sample.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import LossReduction, look_up_option
from torch.nn.modules.loss import _Loss

__all__ = ["MoSELoss", "pairwise_seg_cost", "matching_plan"]


def pairwise_seg_cost(
    probs: torch.Tensor,
    annotations: torch.Tensor,
    cost: str = "iou",
    include_background: bool = False,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Cost ``(B, N, M)`` of every sample against every annotation.

    - ``"iou"``: ``1 - mean_c (I_c + smooth) / (U_c + smooth)`` with the soft intersection ``I_c = sum_v p_vc
      y_vc`` and union ``U_c = sum_v p_vc + sum_v y_vc - I_c`` of class ``c`` (``y`` one-hot), over the
      foreground classes (``include_background=False``, as Gao et al.) or all classes; ``smooth = 1`` as the
      authors' code. For hard (one-hot) ``probs`` and ``smooth = 0`` it is ``1 - IoU``.
    - ``"ce"``: the mean over voxels of the cross-entropy ``-log p_{v, y_v}`` (all classes).

    Args:
        probs: sample probabilities ``(B, N, C, *spatial)`` (softmax over ``C``).
        annotations: integer label maps ``(B, M, *spatial)``, values in ``[0, C)``.
        cost: ``"iou"`` or ``"ce"``.
        include_background: whether class 0 counts in ``"iou"``.
        smooth: added to the intersection and the union in ``"iou"``.

    Example::

        probs = torch.tensor([[[1.0, 1, 0, 0], [0, 0, 1, 1]]]).reshape(1, 1, 2, 4)  # one sample, foreground 2 voxels
        pairwise_seg_cost(probs, torch.tensor([[[0, 0, 1, 1], [0, 0, 0, 1]]]), smooth=0.0)  # [[[0.0, 0.5]]]
    """
    cost = look_up_option(cost, ("iou", "ce"))
    if probs.ndim < 4 or annotations.ndim != probs.ndim - 1 or annotations.shape[0] != probs.shape[0]:
        raise ValueError(
            f"probs must be (B, N, C, *spatial) and annotations (B, M, *spatial) with the same B and spatial size, "
            f"got {tuple(probs.shape)} and {tuple(annotations.shape)}."
        )
    if tuple(annotations.shape[2:]) != tuple(probs.shape[3:]):
        raise ValueError(
            f"annotations {tuple(annotations.shape)} and samples {tuple(probs.shape)} differ in spatial size."
        )
    num_classes = probs.shape[2]
    p = probs.flatten(3)  # (B, N, C, V)
    labels = annotations.flatten(2).long().to(p.device)  # (B, M, V)
    if cost == "ce":
        log_p = torch.log(p.clamp_min(1e-8))  # (B, N, C, V)
        index = labels.unsqueeze(1).expand(-1, p.shape[1], -1, -1)  # (B, N, M, V)
        picked = torch.gather(log_p, 2, index)  # log p of annotation m's class, (B, N, M, V)
        return -picked.mean(-1)
    y = F.one_hot(labels, num_classes).permute(0, 1, 3, 2).to(p.dtype)  # (B, M, C, V)
    first = 0 if include_background else 1
    if first >= num_classes:
        raise ValueError("the IoU cost without background needs C >= 2 classes.")
    p, y = p[:, :, first:], y[:, :, first:]
    inter = torch.einsum("bncv,bmcv->bnmc", p, y)
    union = p.sum(-1).unsqueeze(2) + y.sum(-1).unsqueeze(1) - inter
    return 1.0 - ((inter + smooth) / (union + smooth).clamp_min(1e-12)).mean(-1)


def matching_plan(
    cost: torch.Tensor,
    target_weights: torch.Tensor | None = None,
    gamma: float = 0.5,
    solver: str = "exact",
    sinkhorn_eps: float = 0.01,
    sinkhorn_iters: int = 200,
) -> torch.Tensor:
    """The transport plan ``P*`` ``(B, N, M)`` of the MoSE loss (no gradient).

    ``P* = argmin_P sum_nm P_nm cost_nm`` subject to ``P >= 0``, ``sum_n P_nm = v_m`` (each annotation's weight is
    transported) and ``sum_m P_nm <= gamma`` (each sample takes at most ``gamma``). Needs ``N * gamma >= sum v``.

    Solvers: ``"exact"``, the linear program solved by SciPy's HiGHS per batch item on the CPU (for the small
    ``N x M`` of a training batch); ``"sinkhorn"``, entropic optimal transport (log domain, ``sinkhorn_eps`` times
    the largest cost, ``sinkhorn_iters`` iterations) on the balanced problem with a zero-cost dummy annotation that
    absorbs the samples' spare capacity ``N * gamma - sum v``: approximate, batched, on the tensors' device.

    Args:
        cost: ``(B, N, M)`` costs.
        target_weights: ``(B, M)`` annotation weights (each row summing to 1); uniform when None.
        gamma: capacity of each sample, ``1 / N <= gamma <= 1`` (0.5 at the start of Gao et al.'s training,
            then 1).
        solver: ``"exact"`` or ``"sinkhorn"``.
        sinkhorn_eps: entropic regularisation relative to the largest cost.
        sinkhorn_iters: Sinkhorn iterations.

    Example::

        cost = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
        matching_plan(cost, gamma=0.5)  # [[[0.5, 0.0], [0.0, 0.5]]]
    """
    solver = look_up_option(solver, ("exact", "sinkhorn"))
    if cost.ndim != 3:
        raise ValueError(f"cost must be (B, N, M), got shape {tuple(cost.shape)}.")
    batch, num_samples, num_targets = cost.shape
    cost = cost.detach().double()
    if target_weights is None:
        v = cost.new_full((batch, num_targets), 1.0 / num_targets)
    else:
        v = target_weights.detach().to(cost)
        if tuple(v.shape) != (batch, num_targets):
            raise ValueError(f"target_weights must be (B, M) = ({batch}, {num_targets}), got {tuple(v.shape)}.")
        if (v < 0).any():
            raise ValueError("target_weights must be non-negative.")
    if not 0 < gamma <= 1 or num_samples * gamma < float(v.sum(1).max()) - 1e-9:
        raise ValueError(
            f"gamma must be in (0, 1] with N * gamma >= the annotations' total weight; got gamma={gamma}, "
            f"N={num_samples}."
        )
    if solver == "sinkhorn":
        return _sinkhorn_capped(cost, v, gamma, sinkhorn_eps, sinkhorn_iters).to(torch.float32)
    from scipy.optimize import linprog

    plans = []
    for b in range(batch):
        c = cost[b].cpu().numpy()
        # variables P_nm in row-major order: equality on the column sums, inequality on the row sums
        a_eq = np.kron(np.ones((1, num_samples)), np.eye(num_targets))
        a_ub = np.kron(np.eye(num_samples), np.ones((1, num_targets)))
        res = linprog(
            c.reshape(-1),
            A_ub=a_ub,
            b_ub=np.full(num_samples, gamma),
            A_eq=a_eq,
            b_eq=v[b].cpu().numpy(),
            bounds=(0, None),
            method="highs",
        )
        if not res.success:
            raise RuntimeError(f"the matching linear program failed for batch item {b}: {res.message}")
        plans.append(torch.as_tensor(res.x.reshape(num_samples, num_targets)))
    return torch.stack(plans).clamp_min(0.0).to(device=cost.device, dtype=torch.float32)


def _sinkhorn_capped(cost: torch.Tensor, v: torch.Tensor, gamma: float, eps: float, iters: int) -> torch.Tensor:
    """Entropic OT with row supplies ``gamma`` and column demands ``v`` plus a zero-cost dummy column for the rest."""
    batch, num_samples, _ = cost.shape
    spare = (num_samples * gamma - v.sum(1, keepdim=True)).clamp_min(0.0)
    c = torch.cat([cost, cost.new_zeros(batch, num_samples, 1)], dim=2)
    col = torch.cat([v, spare], dim=1)
    row = cost.new_full((batch, num_samples), gamma)
    reg = eps * c.amax((1, 2), keepdim=True).clamp_min(1e-6)
    log_row, log_col = torch.log(row), torch.log(col.clamp_min(1e-300))
    f, g = torch.zeros_like(row), torch.zeros_like(col)
    for _ in range(iters):
        f = reg[:, :, 0] * (log_row - torch.logsumexp((g.unsqueeze(1) - c) / reg, dim=2))
        g = reg[:, 0] * (log_col - torch.logsumexp((f.unsqueeze(2) - c) / reg, dim=1))
    plan = torch.exp((f.unsqueeze(2) + g.unsqueeze(1) - c) / reg)
    plan = plan * (col > 0).unsqueeze(1)
    return plan[:, :, :-1]


class MoSELoss(_Loss):
    """The optimal-transport loss of the Mixture of Stochastic Experts (Gao et al., ICLR 2023).

    Gao et al. (2023) Modeling Multimodal Aleatoric Uncertainty in Segmentation with Mixture of Stochastic Experts.
    ICLR 2023.

    For each image, with ``N`` samples of weights ``u`` (``u_n = w_k / S``, the gate's weight of the sample's expert
    over its ``S`` samples), ``M`` annotations of weights ``v`` and the costs ``c_nm``
    (:py:func:`pairwise_seg_cost`):

    ``L = sum_nm P*_nm c_nm + beta * KL(P* 1_M || u)``, with ``P*`` the plan of :py:func:`matching_plan` (annotation
    marginal ``v``, each sample's mass capped at ``gamma``), held constant. The first term is the matching term of
    the paper, the second trains the gate toward the marginal the plan gives the samples.

    Follows the paper and the authors' code (``utils/OTloss.py`` of gaozhitong/MoSE-AUSeg) in: the cost
    ``1 - soft IoU`` over the foreground classes with smoothing 1 (or a cross-entropy), the capped sample marginal
    with ``gamma = 1/2`` to start (the authors set ``gamma = 1`` later in training: change :py:attr:`gamma`),
    ``beta = 1``, no gradient through the plan. Departures: the plan is the exact solution of the linear program
    (or Sinkhorn), where the authors' code uses a greedy approximation; the KL is summed over the samples and
    averaged over the batch (the authors' ``F.kl_div`` default averages over batch and samples, i.e. their ``beta``
    is ``1 / N`` of ours); the optional soft grouping of experts (their Cityscapes setting) is not implemented; the
    ``"ce"`` cost includes the background.

    ``ce_weight > 0`` (not in the paper) adds the cross-entropy of every matched pair to the matching term,
    ``L = sum_nm P*_nm (c_nm + ce_weight * CE_nm) + beta * KL``, with the plan still chosen by ``cost``: the soft
    IoU sets which annotation each sample answers for (it matches empty annotations well, the cross-entropy cost
    does not), the cross-entropy gives every boundary voxel a gradient of its own, which the IoU (a ratio of sums
    over the image) spreads thin (nnU-Net's Dice + cross-entropy, Isensee et al. 2021).

    Args:
        cost: ``"iou"`` (default, the paper's) or ``"ce"``, see :py:func:`pairwise_seg_cost`.
        ce_weight: weight of the matched pairs' cross-entropy in the matching term (0: the paper's loss).
        beta: weight of the KL term of the gate.
        gamma: capacity of each sample in the plan.
        solver: ``"exact"`` or ``"sinkhorn"``, see :py:func:`matching_plan`.
        include_background: whether class 0 counts in the IoU cost.
        smooth: smoothing of the soft IoU.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per image) over the batch.
        return_dict: return ``{"loss", "match", "gate_kl"}`` (for :py:class:`~monai_probseg.engines.ProbSegTrainer`
            logging) instead of the loss tensor.

    Example::

        loss_fn = MoSELoss()
        out = net(x, y)  # MixtureOfStochasticExperts in training mode
        loss = loss_fn(out, annotations)  # annotations (B, M, *spatial) integer labels
        # or with tensors: loss_fn(sample_logits, annotations, sample_weights=weights)
    """

    def __init__(
        self,
        cost: str = "iou",
        beta: float = 1.0,
        gamma: float = 0.5,
        solver: str = "exact",
        include_background: bool = False,
        smooth: float = 1.0,
        reduction: LossReduction | str = LossReduction.MEAN,
        return_dict: bool = False,
        ce_weight: float = 0.0,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.cost = look_up_option(cost, ("iou", "ce"))
        if not (np.isfinite(ce_weight) and ce_weight >= 0):
            raise ValueError(f"ce_weight must be a finite number >= 0, got {ce_weight!r}.")
        self.ce_weight = float(ce_weight)
        self.solver = look_up_option(solver, ("exact", "sinkhorn"))
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}.")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}.")
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.include_background = bool(include_background)
        self.smooth = float(smooth)
        self.return_dict = bool(return_dict)

    def forward(
        self,
        input: torch.Tensor | Mapping[str, torch.Tensor],
        target: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        target_weights: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """
        Args:
            input: sample logits ``(B, N, C, *spatial)``, or the training output of
                :py:class:`~monai_probseg.networks.nets.MixtureOfStochasticExperts` (``"samples"`` and
                ``"sample_weights"``).
            target: annotations ``(B, M, *spatial)`` integer labels in ``[0, C)``.
            sample_weights: ``(B, N)`` weights of the samples (rows summing to 1), required with a tensor input.
            target_weights: ``(B, M)`` weights of the annotations; uniform when None.
        """
        if isinstance(input, Mapping):
            if "samples" not in input or "sample_weights" not in input:
                raise KeyError(f"input must hold 'samples' and 'sample_weights', got keys {sorted(input)}.")
            logits, sample_weights = input["samples"], input["sample_weights"]
        else:
            logits = input
        if sample_weights is None:
            raise ValueError("sample_weights (B, N) must be given with a tensor input.")
        if logits.ndim < 4:
            raise ValueError(f"sample logits must be (B, N, C, *spatial), got shape {tuple(logits.shape)}.")
        if tuple(sample_weights.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"sample_weights must be (B, N) = {tuple(logits.shape[:2])}, got {tuple(sample_weights.shape)}."
            )
        target = target.as_tensor() if hasattr(target, "as_tensor") else target
        if target.ndim != logits.ndim - 1:
            raise ValueError(
                f"target must be (B, M, *spatial) annotations for samples {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}."
            )
        probs = torch.softmax(logits.float(), dim=2)
        costs = pairwise_seg_cost(probs, target, self.cost, self.include_background, self.smooth)
        plan = matching_plan(costs, target_weights, self.gamma, self.solver).to(costs)
        match = (plan * costs).sum((1, 2))
        if self.ce_weight > 0:  # from log_softmax: no clamp, a gradient for confident mistakes too
            log_p = torch.log_softmax(logits.float(), dim=2).flatten(3)  # (B, N, C, V)
            y = F.one_hot(target.flatten(2).long().to(log_p.device), log_p.shape[2]).to(log_p.dtype)  # (B, M, V, C)
            ce = -torch.einsum("bncv,bmvc->bnm", log_p, y) / log_p.shape[-1]  # one matrix product per image
            match = match + self.ce_weight * (plan * ce).sum((1, 2))
        marginal = plan.sum(2)
        u = sample_weights.float().clamp_min(1e-8)
        gate_kl = torch.xlogy(marginal, marginal).sum(1) - (marginal * torch.log(u)).sum(1)
        loss = match + self.beta * gate_kl
        if self.reduction == LossReduction.MEAN.value:
            loss, match, gate_kl = loss.mean(), match.mean(), gate_kl.mean()
        elif self.reduction == LossReduction.SUM.value:
            loss, match, gate_kl = loss.sum(), match.sum(), gate_kl.sum()
        if self.return_dict:
            return {"loss": loss, "match": match.detach(), "gate_kl": gate_kl.detach()}
        return loss
