# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""The sampling baselines users compare probabilistic models with: MC dropout, deep ensembles, test-time augmentation.

Each is a :py:class:`~monai_probseg.networks.RepeatedPassSampler` of the model contract (sample ``k`` is one full
pass of member ``k``) and one line with :py:class:`~monai_probseg.inferers.StochasticSlidingWindowInferer`::

    inferer(image, mc_dropout(net))             # N passes with dropout on (Gal & Ghahramani, ICML 2016)
    inferer(image, [net_a, net_b, net_c])       # one pass per member (Lakshminarayanan et al., NeurIPS 2017)
    inferer(image, FlipTTA(net))                # one pass per flip of the spatial axes (test-time augmentation)

They have the sampling interface of every model (``sample(distribution(x), num_samples, generator)``), and each is
an ordinary ``nn.Module`` whose ``forward`` returns the logits of its best single answer, so MONAI's own inferers
accept it.
For pipeline-level test-time augmentation with arbitrary random transforms and their inverses, MONAI's
``monai.data.TestTimeAugmentation`` works on dictionaries; :py:class:`FlipTTA` is the inferer-level form.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from monai_probseg.networks.contract import ProbabilisticModel, RepeatedPassSampler

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


def _in_channels(network: nn.Module, in_channels: int | None) -> int | None:
    """``in_channels`` if given, else what the wrapped model declares in the model contract (``None`` if nothing)."""
    if in_channels is not None or not isinstance(network, ProbabilisticModel):
        return in_channels
    return network.in_channels


class MCDropout(RepeatedPassSampler):
    """MC dropout (Gal & Ghahramani, ICML 2016): every sample is a pass with dropout on, everything else in eval mode.

    :py:meth:`member` (any index: the number of samples is free) runs the network with only its dropout layers in
    training mode and restores the network's train/eval state after the call. ``forward`` is the network as it is
    (in eval mode: without dropout, the usual single prediction).

    Args:
        network: a network with at least one dropout layer.
        in_channels: the number of image channels, for the inferer's input check; by default that of ``network``
            if it is a model of the contract.

    Example::

        net = monai.networks.nets.UNet(3, 4, 4, (16, 32, 64), (2, 2), dropout=0.1)
        out = StochasticSlidingWindowInferer((64, 64, 64), num_samples=10, seed=0)(image, MCDropout(net))
    """

    def __init__(self, network: nn.Module, in_channels: int | None = None) -> None:
        super().__init__()
        if not any(isinstance(m, _DropoutNd) for m in network.modules()):
            raise ValueError(f"{type(network).__name__} has no dropout layer: MC dropout needs one.")
        self.network = network
        self.in_channels = _in_channels(network, in_channels)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The network's logits, in its current mode (no dropout in eval mode).

        Args:
            x: the image batch.
            args: more positional arguments of the network.
            kwargs: keyword arguments of the network.
        """
        return self.network(x, *args, **kwargs)

    def member(self, index: int) -> Callable[..., torch.Tensor]:
        """The dropout pass (the same callable for every ``index``).

        Args:
            index: the sample index (unused: every pass draws its own dropout masks).
        """
        return self.dropout_pass

    def dropout_pass(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """One MC-dropout pass: the network with only its dropout layers in training mode.

        Args:
            x: the image batch.
            args: more positional arguments of the network.
            kwargs: keyword arguments of the network.
        """
        modes = {m: m.training for m in self.network.modules()}
        try:
            enable_mc_dropout(self.network)
            return self.network(x, *args, **kwargs)
        finally:
            for module, mode in modes.items():
                module.training = mode


def mc_dropout(network: nn.Module) -> MCDropout:
    """Return ``MCDropout(network)``: the one-line MC-dropout baseline.

    Args:
        network: a network with at least one dropout layer.
    """
    return MCDropout(network)


def _log_mean_probability(members: Sequence[Callable[..., torch.Tensor]], x: torch.Tensor, *args, **kwargs):
    """Log of the members' mean softmax probability: a logit map of their mean prediction."""
    probs = torch.stack([torch.softmax(m(x, *args, **kwargs).float(), 1) for m in members]).mean(0)
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


class DeepEnsemble(RepeatedPassSampler):
    """A deep ensemble (Lakshminarayanan et al., NeurIPS 2017): one sample per member, ``num_members`` samples.

    ``forward`` returns the logarithm of the members' mean softmax probability (a valid logit map of the
    ensemble's mean prediction), so the ensemble also works with MONAI's ordinary inferers.

    Args:
        members: the trained networks (same input and output channels).
        in_channels: the number of image channels, for the inferer's input check; by default that of the first
            member if it is a model of the contract.

    Example::

        ensemble = DeepEnsemble([net_a, net_b, net_c])
        out = StochasticSlidingWindowInferer((96, 96, 96), num_samples=3)(image, ensemble)  # 3 samples
    """

    def __init__(self, members: Sequence[nn.Module], in_channels: int | None = None) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("a DeepEnsemble needs at least one member network.")
        self.members = nn.ModuleList(members)
        self.num_members = len(self.members)
        self.in_channels = _in_channels(self.members[0], in_channels)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Log of the members' mean probability.

        Args:
            x: the image batch.
            args: more positional arguments of the members.
            kwargs: keyword arguments of the members.
        """
        return _log_mean_probability(self.members, x, *args, **kwargs)

    def member(self, index: int) -> nn.Module:
        """Member network ``index``.

        Args:
            index: ``0 <= index < num_members``.
        """
        return self.members[index]


class FlippedNetwork(nn.Module):
    """Run ``network`` on its input flipped along ``axes`` and flip the output back (one TTA member).

    Args:
        network: the network.
        axes: the spatial axes (0-based, after batch and channel) to flip; empty for the identity.
    """

    def __init__(self, network: nn.Module, axes: Sequence[int]) -> None:
        super().__init__()
        self.network = network
        self.axes = tuple(int(a) for a in axes)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The network's logits on the flipped input, flipped back.

        Args:
            x: the image batch ``(B, C, *spatial)``.
            args: more positional arguments of the network.
            kwargs: keyword arguments of the network.
        """
        if not self.axes:
            return self.network(x, *args, **kwargs)
        dims = [a + 2 for a in self.axes]
        return torch.flip(self.network(torch.flip(x, dims), *args, **kwargs), dims)


class FlipTTA(RepeatedPassSampler):
    """Test-time augmentation by flips: one member per subset of the flipped spatial axes.

    With ``spatial_axes=(0, 1, 2)`` there are 8 members (no flip, each axis, each pair, all three). The stochastic
    inferer runs one full sliding-window pass per member (``num_members`` samples); ``forward`` returns the log of
    the mean probability.

    Args:
        network: the trained network.
        spatial_axes: the spatial axes (0-based, after batch and channel) that may be flipped.
        in_channels: the number of image channels, for the inferer's input check; by default that of ``network``
            if it is a model of the contract.

    Example::

        out = StochasticSlidingWindowInferer((96, 96, 96), num_samples=8)(image, FlipTTA(net, spatial_axes=(0, 1, 2)))
    """

    def __init__(
        self, network: nn.Module, spatial_axes: Sequence[int] = (0, 1), in_channels: int | None = None
    ) -> None:
        super().__init__()
        axes = tuple(int(a) for a in spatial_axes)
        if len(set(axes)) != len(axes) or any(a < 0 or a > 2 for a in axes):
            raise ValueError(f"spatial_axes must be distinct values in 0..2, got {spatial_axes}.")
        combos = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
        self.network = network
        self.members = nn.ModuleList([FlippedNetwork(network, c) for c in combos])
        self.num_members = len(self.members)
        self.in_channels = _in_channels(network, in_channels)

    def _check_axes(self, x: torch.Tensor) -> None:
        if max((a for m in self.members for a in m.axes), default=-1) >= x.ndim - 2:
            raise ValueError(f"FlipTTA flips spatial axes {[m.axes for m in self.members]} of a {x.ndim - 2}D input.")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Log of the mean probability over the flips.

        Args:
            x: the image batch ``(B, C, *spatial)``.
            args: more positional arguments of the network.
            kwargs: keyword arguments of the network.
        """
        self._check_axes(x)
        return _log_mean_probability(self.members, x, *args, **kwargs)

    def member(self, index: int) -> FlippedNetwork:
        """The network on flip ``index``.

        Args:
            index: ``0 <= index < num_members``; member 0 is the unflipped network.
        """
        return self.members[index]

    def distribution(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"image": x}``, after checking that the flipped axes exist.

        Args:
            x: image ``(B, C, *spatial)``.
        """
        self._check_axes(x)
        return {"image": x}
