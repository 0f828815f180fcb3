# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""Label-map helpers shared by the data generators and the evaluation: the raters' consensus."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["majority_vote"]

LabelMap = TypeVar("LabelMap", np.ndarray, torch.Tensor)


def majority_vote(
    raters: LabelMap, tie_break: np.ndarray | torch.Tensor | None = None, num_labels: int | None = None
) -> LabelMap:
    """Per-voxel majority vote of ``R`` label maps: the consensus of several raters.

    Tie-break: a tie goes to the label of ``tie_break`` at that voxel when it is among the tied labels, otherwise
    (and without ``tie_break``) to the **largest** tied label, so foreground wins over background: a voxel that two
    of four annotators mark is lesion, and with the BraTS labels (1 necrotic core, 2 edema, 3 enhancing tumour) it
    stays tumour.

    Args:
        raters: ``(R, *spatial)`` integer label maps, a numpy array or a torch tensor.
        tie_break: optional ``(*spatial)`` label map (e.g. the nominal segmentation of a phantom) deciding ties.
        num_labels: number of labels ``L`` (labels ``0 .. L-1`` are counted; default ``raters.max() + 1``).

    Returns:
        ``(*spatial)`` label map of the same type, device and dtype as ``raters``.

    Raises:
        ValueError: when ``raters`` is not ``(R, *spatial)`` or ``tie_break`` has another spatial shape.

    Example::

        majority_vote(np.array([[0, 1, 2], [0, 1, 1], [2, 2, 1]]))  # array([0, 1, 1])
        majority_vote(torch.tensor([[1, 0], [0, 0]]))  # tensor([1, 0]): one vote each -> the larger label
    """
    is_numpy = not isinstance(raters, torch.Tensor)
    if is_numpy:
        array = np.asarray(raters)
        # torch has no uint16/32/64 arithmetic and no foreign byte order: count on int64 then
        native = array.dtype in (np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64) and array.dtype.isnative
        labels = torch.from_numpy(np.ascontiguousarray(array if native else array.astype(np.int64)))
    else:
        labels = raters
    if labels.ndim < 2:
        raise ValueError(f"raters must be label maps (R, *spatial), got shape {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"raters must be integer label maps, got dtype {labels.dtype}.")
    n = int(labels.max()) + 1 if num_labels is None else int(num_labels)
    count_dtype = torch.int16 if labels.shape[0] < 2**15 else torch.int64
    counts = torch.stack([(labels == lab).sum(0, dtype=count_dtype) for lab in range(n)])
    # argmax returns the first maximum: over the reversed labels that is the largest tied label
    seg = n - 1 - counts.flip(0).argmax(0)
    if tie_break is not None:
        tb = torch.as_tensor(np.asarray(tie_break) if not isinstance(tie_break, torch.Tensor) else tie_break)
        tb = tb.to(device=labels.device, dtype=torch.int64)
        if tuple(tb.shape) != tuple(labels.shape[1:]):
            raise ValueError(
                f"tie_break has shape {tuple(tb.shape)}, expected the raters' spatial shape {tuple(labels.shape[1:])}."
            )
        winners = counts == counts.max(0, keepdim=True).values
        valid = (tb >= 0) & (tb < n)
        tb_wins = winners.gather(0, tb.clamp(0, n - 1)[None])[0] & valid
        seg = torch.where(tb_wins, tb, seg)
    if is_numpy:
        return seg.numpy().astype(array.dtype)
    return seg.to(labels.dtype)
