# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The sampling baselines users compare probabilistic models with: MC dropout, deep ensembles, test-time augmentation.

Each is one line with :py:class:`~monai_probseg.inferers.StochasticSlidingWindowInferer`::

    inferer(image, mc_dropout(net))             # N passes with dropout on (Gal & Ghahramani, ICML 2016)
    inferer(image, [net_a, net_b, net_c])       # one pass per member (Lakshminarayanan et al., NeurIPS 2017)
    inferer(image, FlipTTA(net))                # one pass per flip of the spatial axes (test-time augmentation)

Each wrapper is also an ordinary ``nn.Module`` whose ``forward`` returns logits, so MONAI's own inferers accept it.
For pipeline-level test-time augmentation with arbitrary random transforms and their inverses, MONAI's
``monai.data.TestTimeAugmentation`` works on dictionaries; :py:class:`FlipTTA` is the inferer-level form.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["MCDropout", "mc_dropout", "enable_mc_dropout", "DeepEnsemble", "FlipTTA", "FlippedNetwork"]


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode except its dropout layers, in place, and return it.

    Batch-norm and other layers keep their eval behaviour (running statistics); only ``nn.Dropout*`` and
    ``nn.AlphaDropout`` layers sample.

    Args:
        model: the network.

    Raises:
        ValueError: if ``model`` has no dropout layer (MC dropout would then give N identical samples).
    """
    model.eval()
    dropouts = [m for m in model.modules() if isinstance(m, _DropoutNd)]
    if not dropouts:
        raise ValueError(
            f"{type(model).__name__} has no dropout layer, so MC dropout would give identical samples; "
            "build it with dropout (e.g. monai.networks.nets.UNet(..., dropout=0.1))."
        )
    for layer in dropouts:
        layer.train()
    return model


class MCDropout(nn.Module):
    """Wrap a network so that every call runs it with dropout on and everything else in eval mode.

    The wrapped network's train/eval state is restored after each call.

    Args:
        network: a network with at least one dropout layer.

    Example::

        net = monai.networks.nets.UNet(3, 4, 4, (16, 32, 64), (2, 2), dropout=0.1)
        out = StochasticSlidingWindowInferer((64, 64, 64), num_samples=10, seed=0)(image, MCDropout(net))
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if not any(isinstance(m, _DropoutNd) for m in network.modules()):
            raise ValueError(f"{type(network).__name__} has no dropout layer: MC dropout needs one.")
        self.network = network
        self.in_channels = getattr(network, "in_channels", None)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        modes = {m: m.training for m in self.network.modules()}
        try:
            enable_mc_dropout(self.network)
            return self.network(x, *args, **kwargs)
        finally:
            for module, mode in modes.items():
                module.training = mode


def mc_dropout(network: nn.Module) -> MCDropout:
    """Return ``MCDropout(network)``: the one-line MC-dropout baseline."""
    return MCDropout(network)


class DeepEnsemble(nn.Module):
    """A deep ensemble: the stochastic inferer draws one sample per member.

    ``forward`` returns the logarithm of the members' mean softmax probability (a valid logit map of the
    ensemble's mean prediction), so the ensemble also works with MONAI's ordinary inferers.

    Args:
        members: the trained networks (same input and output channels).

    Example::

        ensemble = DeepEnsemble([net_a, net_b, net_c])
        out = StochasticSlidingWindowInferer((96, 96, 96))(image, ensemble)  # 3 samples
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("a DeepEnsemble needs at least one member network.")
        self.members = nn.ModuleList(members)
        self.in_channels = getattr(members[0], "in_channels", None)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x, *args, **kwargs).float(), 1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


class FlippedNetwork(nn.Module):
    """Run ``network`` on its input flipped along ``axes`` and flip the output back (one TTA member)."""

    def __init__(self, network: nn.Module, axes: Sequence[int]) -> None:
        super().__init__()
        self.network = network
        self.axes = tuple(int(a) for a in axes)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not self.axes:
            return self.network(x, *args, **kwargs)
        dims = [a + 2 for a in self.axes]
        return torch.flip(self.network(torch.flip(x, dims), *args, **kwargs), dims)


class FlipTTA(nn.Module):
    """Test-time augmentation by flips: one member per subset of the flipped spatial axes.

    With ``spatial_axes=(0, 1, 2)`` there are 8 members (no flip, each axis, each pair, all three). The stochastic
    inferer runs one full sliding-window pass per member; ``forward`` returns the log of the mean probability.

    Args:
        network: the trained network.
        spatial_axes: the spatial axes (0-based, after batch and channel) that may be flipped.

    Example::

        out = StochasticSlidingWindowInferer((96, 96, 96))(image, FlipTTA(net, spatial_axes=(0, 1, 2)))
    """

    def __init__(self, network: nn.Module, spatial_axes: Sequence[int] = (0, 1)) -> None:
        super().__init__()
        axes = tuple(int(a) for a in spatial_axes)
        if len(set(axes)) != len(axes) or any(a < 0 or a > 2 for a in axes):
            raise ValueError(f"spatial_axes must be distinct values in 0..2, got {spatial_axes}.")
        combos = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
        self.network = network
        self.members = nn.ModuleList([FlippedNetwork(network, c) for c in combos])
        self.in_channels = getattr(network, "in_channels", None)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if max((a for m in self.members for a in m.axes), default=-1) >= x.ndim - 2:
            raise ValueError(f"FlipTTA flips spatial axes {[m.axes for m in self.members]} of a {x.ndim - 2}D input.")
        probs = torch.stack([torch.softmax(m(x, *args, **kwargs).float(), 1) for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
