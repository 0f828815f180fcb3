"""A toy probabilistic segmentation method, defined in one place: one network and one loss, nothing else.

It shows what adding a method takes under the model contract (monai_probseg.networks.contract): the network
subclasses ``DistributionModel`` and the inferer, the bundle configs and the metrics work unchanged.

The model: logits ``= mean(x) + sigma * eta`` with ``eta`` standard normal, independent per voxel and class, and
``sigma`` a fixed positive number (a mean plus iid Gaussian logit noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_probseg.networks import DistributionModel
from monai_probseg.utils import make_generator

__all__ = ["GaussianLogitNoise", "GaussianLogitNoiseLoss"]


class GaussianLogitNoise(DistributionModel):
    """Mean logits from one 3x3 convolution plus iid Gaussian noise of standard deviation ``sigma`` on the logits.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: number of image channels.
        out_channels: number of classes.
        sigma: standard deviation of the logit noise.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, sigma: float = 1.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.sigma = float(sigma)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean logits (the best single answer; also what the loss needs, with the label ignored)."""
        return self.conv(x)

    def distribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"mean": (B, C, *spatial)}``: stitchable by sliding windows like logits."""
        return {"mean": self.conv(x)}

    def mean_logits(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        return maps["mean"]

    def sample(
        self, maps: dict[str, torch.Tensor], num_samples: int, generator: int | torch.Generator | None = None
    ) -> torch.Tensor:
        """``mean + sigma * eta``, ``(B, N, C, *spatial)``; the noise is drawn on the CPU for a seed."""
        mean = maps["mean"]
        gen = make_generator(generator)
        device = gen.device if gen is not None else mean.device
        eta = torch.randn((mean.shape[0], num_samples, *mean.shape[1:]), generator=gen, device=device)
        return mean.unsqueeze(1) + self.sigma * eta.to(mean)


class GaussianLogitNoiseLoss(_Loss):
    """Cross-entropy of the mean logits: the maximum-likelihood fit of the toy's mean (its ``sigma`` is fixed).

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_item = F.cross_entropy(input, target[:, 0].long(), reduction="none").flatten(1).mean(1)
        if self.reduction == LossReduction.NONE.value:
            return per_item
        return per_item.sum() if self.reduction == LossReduction.SUM.value else per_item.mean()
