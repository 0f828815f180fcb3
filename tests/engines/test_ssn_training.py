# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import unittest

import torch
from parameterized import parameterized

from monai_probseg.engines import ProbSegTrainer
from monai_probseg.losses import LowRankMVNNLLLoss
from monai_probseg.networks.nets import StochasticSegmentationNetwork


def _phantom(size=24):
    """A 3-class sphere in a cube of air: about 87 % of the voxels are exactly zero (background, no signal)."""
    grid = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    zz, yy, xx = torch.meshgrid(grid, grid, grid, indexing="ij")
    radius = (zz**2 + yy**2 + xx**2).sqrt()
    inside = radius < size / 4
    image = inside.float()[None, None]
    label = torch.zeros(1, 1, size, size, size, dtype=torch.long)
    label[0, 0][inside] = 1
    label[0, 0][radius < size / 8] = 2
    return image, label


def _net(**kwargs):
    return StochasticSegmentationNetwork(
        3, 1, 3, rank=10, channels=(4, 8), strides=(2,), num_res_units=0, backbone_channels=4, **kwargs
    )


class TestSSNTraining(unittest.TestCase):
    @parameterized.expand([["no_roi", False], ["roi_from_image", True]])
    def test_200_steps_finite_with_air(self, _, roi_from_image):
        """No NaN/Inf in the loss, gradients or parameters over 200 steps on a 24^3 phantom with large air regions."""
        torch.manual_seed(0)
        image, label = _phantom(24)
        self.assertGreater(float((image == 0).float().mean()), 0.8)
        net = _net(roi_from_image=roi_from_image)
        loss_fn = LowRankMVNNLLLoss(num_mc_samples=20, generator=0)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)  # a large step to provoke the background blow-up
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(200):
            x = image + 0.05 * torch.randn(image.shape, generator=g) * image
            out = net(x, label)
            loss = loss_fn(out, label)
            opt.zero_grad()
            loss.backward()
            self.assertTrue(torch.isfinite(loss), f"loss {float(loss.detach())} at step {len(losses)}")
            for name, p in net.named_parameters():
                self.assertTrue(torch.isfinite(p.grad).all(), f"non-finite gradient of {name} at step {len(losses)}")
            opt.step()
            losses.append(float(loss.detach()))
        self.assertEqual(net.num_fallbacks, 0)
        self.assertLess(sum(losses[-10:]) / 10, 0.1 * losses[0])  # and it trained
        if roi_from_image:  # no covariance in the air
            self.assertEqual(float(out["cov_factor"].detach()[:, :, image[0, 0] == 0].abs().max()), 0.0)

    def test_prob_seg_trainer_two_iterations(self):
        image, label = _phantom(16)
        data = [{"image": image[0], "label": label[0]}, {"image": image[0] * 0.9, "label": label[0]}]
        loader = torch.utils.data.DataLoader(data, batch_size=2)
        net = _net()
        before = [p.detach().clone() for p in net.parameters()]
        trainer = ProbSegTrainer(
            device=torch.device("cpu"),
            max_epochs=2,
            train_data_loader=loader,
            network=net,
            optimizer=torch.optim.Adam(net.parameters(), 1e-3),
            loss_function=LowRankMVNNLLLoss(num_mc_samples=4, generator=0, return_dict=True),
        )
        trainer.run()
        self.assertEqual(trainer.state.iteration, 2)
        output = trainer.state.output
        first = output[0] if isinstance(output, list) else output
        self.assertTrue(torch.isfinite(torch.as_tensor(first["loss"])).all())
        self.assertIn("nll_per_voxel", first)
        self.assertIn("ce_mean", first)
        self.assertEqual(tuple(first["pred"].shape), (3, 16, 16, 16))  # the mean logits, decollated
        changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, net.parameters()))
        self.assertTrue(changed)


if __name__ == "__main__":
    unittest.main()
