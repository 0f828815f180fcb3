# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""IntensityMixtureSegmentation: EM recovers well separated tissues, labels follow the intensity order."""

from __future__ import annotations

import pytest
import torch

from monai_probseg.networks.nets import IntensityMixtureSegmentation


@pytest.mark.parametrize("spatial", [(24, 24), (12, 12, 12)])
def test_recovers_three_separated_classes(spatial):
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, spatial, generator=g)
    means = torch.tensor([0.0, 0.3, 0.6, 1.0])
    x = means[truth] + 0.03 * torch.randn(spatial, generator=g) * (truth > 0)
    logits = IntensityMixtureSegmentation(4, (1, 2, 3))(x[None, None])
    assert logits.shape == (1, 4, *spatial) and torch.isfinite(logits).all()
    assert (logits.argmax(1)[0] == truth).float().mean() > 0.99
    t2 = IntensityMixtureSegmentation(4, (3, 2, 1))(x[None, None]).argmax(1)[0]  # reversed contrast order
    assert (t2[truth == 1] == 3).all() and (t2[truth == 3] == 1).all() and (t2[truth == 0] == 0).all()


def test_fit_sorts_components_and_validates():
    v = torch.cat([torch.full((50, 1), 2.0), torch.full((50, 1), 1.0), torch.full((50, 1), 3.0)])
    v += 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
    params = IntensityMixtureSegmentation().fit(v)
    torch.testing.assert_close(params["mean"][:, 0].float(), torch.tensor([1.0, 2.0, 3.0]), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="label_order"):
        IntensityMixtureSegmentation(4, (0, 1, 2))
    with pytest.raises(ValueError, match="brain voxel"):
        IntensityMixtureSegmentation().fit(torch.ones(2, 1))
