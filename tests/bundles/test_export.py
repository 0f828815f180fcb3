# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

"""TorchScript export of every bundle's eval forward with ``monai.bundle ckpt_export``, as MONAI's model-zoo CI runs it.

The probabilistic U-Nets and the SSN are scripted (the default of ``ckpt_export``); the diffusion model is traced
(``--use_trace True --input_shape ...``: MONAI's ``DiffusionModelUNet`` cannot be scripted), as its README says.
"""

from __future__ import annotations

import os

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export

from .utils import BUNDLES_DIR, config

# bundle -> (input shape of the check, whether the export traces; the shape is also the traced input)
EXPORTS = {
    "brats_ssn": ((1, 4, 16, 16, 16), False),
    "brats_prob_unet": ((1, 4, 16, 16, 16), False),
    "lesions2d_prob_unet": ((1, 1, 32, 32), False),
    "brats_diffusion": ((1, 4, 16, 16, 16), True),
    "brain_anatomical_prior": ((1, 1, 16, 16, 16), True),
}


@pytest.mark.parametrize("bundle", sorted(EXPORTS))
def test_ckpt_export_gives_the_logits_of_the_python_module(bundle, tmp_path):
    shape, use_trace = EXPORTS[bundle]
    ckpt = os.path.join(BUNDLES_DIR, bundle, "models", "model.pt")
    kwargs = {"use_trace": True, "input_shape": list(shape)} if use_trace else {}
    filepath = str(tmp_path / "model.ts")
    ckpt_export(
        net_id="network_def",
        filepath=filepath,
        ckpt_file=ckpt,
        meta_file=config(bundle, "metadata.json"),
        config_file=config(bundle, "inference.json"),
        **kwargs,
    )
    exported = torch.jit.load(filepath)
    if not use_trace:
        assert isinstance(exported, torch.jit.RecursiveScriptModule) and "forward" in exported.code

    parser = ConfigParser()
    parser.read_config(config(bundle, "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True), strict=True)
    net.eval()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x)
        got, again = exported(x), exported(x)
    assert got.shape == expected.shape == (shape[0], parser["num_classes"], *shape[2:])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, got, atol=0, rtol=0)  # deterministic (the trace holds its initial noise)
