# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_probseg.metrics.quality import QUALITY_REPORT_KEYS, mean_absolute_error, pearson_r, write_quality_json
from monai_probseg.networks.nets import SegmentationQualityNet
from monai_probseg.quality import (
    CORRUPTIONS,
    QualityPredictor,
    ScoreRegressor,
    corrupt_image,
    quality_net_inputs,
    score_names,
    score_vector,
)


def _image(seed=0, shape=(4, 16, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(shape, generator=g)
    image[:, :2] = 0.0  # "air" of a skull-stripped image
    return image


@pytest.mark.parametrize("corruption", [c for c in CORRUPTIONS if c != "none"])
def test_corruptions_change_the_brain_keep_the_air_and_are_seeded(corruption):
    image = _image()
    out, params = corrupt_image(image, corruption, 0.8, seed=3)
    again, _ = corrupt_image(image, corruption, 0.8, seed=3)
    assert out.shape == image.shape and params["corruption"] == corruption
    assert torch.equal(out, again)
    assert torch.all(out[:, :2] == 0)
    assert (out - image).abs().mean() > 1e-3
    mild, _ = corrupt_image(image, corruption, 0.0, seed=3) if corruption != "zero_modality" else (image, None)
    assert (mild - image).abs().mean() <= (out - image).abs().mean()


def test_corruption_errors():
    with pytest.raises(ValueError, match="corruption must be one of"):
        corrupt_image(_image(), "motion", 0.5)
    with pytest.raises(ValueError, match="severity"):
        corrupt_image(_image(), "noise", 1.5)


def test_quality_net_inputs():
    image, prob = torch.randn(2, 4, 16, 16, 8), torch.rand(2, 4, 16, 16, 8)
    ent, mi = torch.rand(2, 1, 16, 16, 8), torch.rand(2, 1, 16, 16, 8)
    x = quality_net_inputs(image, prob, ent, mi, (8, 8, 4))
    assert x.shape == (2, 10, 8, 8, 4)
    assert torch.allclose(x[:, 4:8].mean((2, 3, 4)), prob.mean((2, 3, 4)), atol=1e-5)  # area resizing keeps means
    with pytest.raises(ValueError, match="entropy has shape"):
        quality_net_inputs(image, prob, ent[:, :, :8], mi, (8, 8, 4))


def _synthetic(n, seed):
    """Scores whose first two columns determine the Dice (plus noise); the others are noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    dice = 1 / (1 + np.exp(-(0.8 * x[:, 0] - 0.5 * x[:, 1]))) + 0.02 * rng.normal(size=n)
    return x, np.clip(dice, 0, 1)


@pytest.mark.parametrize("degree", [1, 2])
def test_regressor_beats_constant_on_held_out_cases(degree):
    x, y = _synthetic(80, 0)
    xt, yt = _synthetic(40, 1)
    reg = ScoreRegressor(degree=degree, alpha=1.0).fit(x, y)
    pred = reg.predict(xt)[:, 0]
    assert mean_absolute_error(pred, yt) < 0.6 * mean_absolute_error(np.full_like(yt, y.mean()), yt)
    assert pearson_r(pred, yt) > 0.9
    clone = ScoreRegressor.from_state_dict(json.loads(json.dumps(reg.state_dict())))
    np.testing.assert_allclose(clone.predict(xt), reg.predict(xt))


def test_quality_net_trained_on_a_tiny_set_beats_constant():
    """Cases whose Dice is the fraction of a bright cube that the 'probability' map covers: learnable in seconds."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def make(n):
        x = torch.zeros(n, 2, 8, 8)
        dice = torch.zeros(n, 1)
        for i in range(n):
            k = int(rng.integers(0, 9))
            x[i, 0, 2:6, 2:6] = 1.0  # the "truth" visible in the image
            x[i, 1, 2:6, 2 : 2 + k // 2] = 1.0  # the segmentation covers part of it
            covered = 4 * (k // 2)
            dice[i] = 2 * covered / (covered + 16)
        return x, dice

    x, y = make(64)
    xt, yt = make(32)
    net = SegmentationQualityNet(2, 2, 1, channels=(8, 16), strides=(2, 2), num_res_units=0, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.l1_loss(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(xt)
    constant = float((yt - y.mean()).abs().mean())
    assert float((pred - yt).abs().mean()) < 0.5 * constant


def test_predictor_report(tmp_path):
    torch.manual_seed(0)
    names = score_names()
    net = SegmentationQualityNet(3, 10, 3, channels=(4,), strides=(2,), num_scores=len(names))
    shape = (12, 12, 12)
    image = torch.randn(1, 4, *shape)
    prob = torch.softmax(torch.randn(1, 4, *shape), 1)
    ent = -(prob * prob.log()).sum(1, keepdim=True)
    out = {"prob": prob, "entropy": ent, "mutual_info": 0.1 * ent, "samples": torch.randint(0, 4, (1, 4, *shape))}
    path = tmp_path / "quality_model.pt"
    torch.save(net.state_dict(), path)
    predictor = QualityPredictor(
        SegmentationQualityNet(3, 10, 3, channels=(4,), strides=(2,), num_scores=len(names)), path, input_size=(8, 8, 8)
    )
    report = predictor("case-7", image, out)
    assert tuple(report)[: len(QUALITY_REPORT_KEYS)] == QUALITY_REPORT_KEYS
    assert set(report["predicted_dice"]) == {"TC", "WT", "ET"}
    assert report["failure"] == (report["predicted_dice_mean"] < 0.7 or report["out_of_distribution"])
    written = write_quality_json(report, tmp_path)
    with open(written) as f:
        assert json.load(f)["case_id"] == "case-7"
    # statistics far from this case's scores: flagged as out of distribution and as a failure
    vector = score_vector(predictor.predict(image, out)[1])
    predictor.network.set_score_statistics(vector + 100.0, np.ones_like(vector))
    flagged = predictor("case-7", image, out)
    assert flagged["out_of_distribution"] is True and flagged["failure"] is True


def test_predictor_flips_average_the_flipped_inputs(tmp_path):
    from monai_probseg.quality import predict_with_flips

    torch.manual_seed(0)
    names = score_names()
    net = SegmentationQualityNet(3, 10, 3, channels=(4,), strides=(2,), num_scores=len(names)).eval()
    x, s = torch.randn(2, 10, 8, 8, 8), torch.randn(2, len(names))
    flips = [[], [0], [1], [0, 1]]
    with torch.no_grad():
        expected = (net(x, s) + net(x.flip(2), s) + net(x.flip(3), s) + net(x.flip(2, 3), s)) / 4
        torch.testing.assert_close(predict_with_flips(net, x, s, flips), expected)
        torch.testing.assert_close(predict_with_flips(net, x, s, [[]]), net(x, s))
    path = tmp_path / "quality_model.pt"
    torch.save(net.state_dict(), path)
    kwargs = {"input_size": (8, 8, 8)}
    fresh = SegmentationQualityNet(3, 10, 3, channels=(4,), strides=(2,), num_scores=len(names))
    assert QualityPredictor(fresh, path, flips=flips, **kwargs).flips == ((), (0,), (1,), (0, 1))
    with pytest.raises(ValueError, match="spatial axes < 3"):
        QualityPredictor(fresh, path, flips=[[3]], **kwargs)


def test_generate_load_and_datalist(tmp_path):
    """End to end on two tiny phantoms with a small deterministic stage-1 network."""
    from monai.networks.nets import UNet

    from monai_probseg.inferers import StochasticSlidingWindowInferer
    from monai_probseg.quality import generate_quality_dataset, load_quality_dataset, quality_datalist

    torch.manual_seed(0)
    network = UNet(3, 4, 4, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    inferer = StochasticSlidingWindowInferer(
        roi_size=(16, 16, 16), num_samples=2, outputs=("prob", "entropy", "mutual_info"), keep_samples=True, seed=0
    )
    kwargs = {"spatial_size": (24, 24, 24), "input_size": (8, 8, 8), "progress": False, "corruption": "blur"}
    generate_quality_dataset(network, inferer, tmp_path, 2, seed=5, **kwargs)
    data = load_quality_dataset(tmp_path)
    assert data["inputs"].shape == (2, 10, 8, 8, 8)
    assert data["scores"].shape == (2, len(score_names())) and data["true_dice"].shape == (2, 3)
    assert np.all((data["true_dice"] >= 0) & (data["true_dice"] <= 1))
    assert data["records"][0]["meta"]["corruption"] == "blur" and data["records"][0]["meta"]["seed"] == 5
    items = quality_datalist(tmp_path, "validation", val_fraction=0.5)
    assert len(items) == 1 and items[0]["case_id"] == "case_5_00001"
    generate_quality_dataset(network, inferer, tmp_path, 2, seed=5, **kwargs)  # on disk: skipped
    other = UNet(3, 4, 4, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    with pytest.raises(ValueError, match="other stage-1 weights"):
        generate_quality_dataset(other, inferer, tmp_path, 2, seed=5, **kwargs)


def test_healthy_fraction_draws_healthy_brains_and_leaves_the_other_cases_alone(tmp_path):
    """healthy_fraction has its own random stream: the other cases keep their variants; a cached case whose variant
    changed is simulated again; a healthy brain segmented as empty has true Dice 1 in every region."""
    from monai_probseg.quality.data import _case_rng, _draw_variant

    def variants(fraction):
        return [_draw_variant(_case_rng(100, i), 100, i, fraction) for i in range(200)]

    none, some, every = variants(0.0), variants(0.2), variants(1.0)
    assert "healthy" not in none and set(every) == {"healthy"}
    assert 20 <= some.count("healthy") <= 60
    assert all(a == b for a, b in zip(none, some) if b != "healthy")

    from monai_probseg.quality import generate_quality_dataset, load_quality_dataset

    class Empty(torch.nn.Module):  # segments nothing, confidently
        def forward(self, x):
            out = torch.full((x.shape[0], 4, *x.shape[2:]), -20.0)
            out[:, 0] = 20.0
            return out

    from monai_probseg.inferers import StochasticSlidingWindowInferer

    inferer = StochasticSlidingWindowInferer(
        roi_size=(16, 16, 16), num_samples=2, outputs=("prob", "entropy", "mutual_info"), keep_samples=True, seed=0
    )
    kwargs = {"spatial_size": (24, 24, 24), "input_size": (8, 8, 8), "progress": False, "corruption": "none"}
    net = Empty().eval()
    first = [i for i, v in enumerate(variants(0.2)) if v == "healthy"][0]
    generate_quality_dataset(net, inferer, tmp_path, 1, seed=100, start=first, **kwargs)
    assert load_quality_dataset(tmp_path)["records"][0]["meta"]["variant"] == none[first]
    generate_quality_dataset(net, inferer, tmp_path, 1, seed=100, start=first, healthy_fraction=0.2, **kwargs)
    data = load_quality_dataset(tmp_path)
    assert len(data["records"]) == 1 and data["records"][0]["meta"]["variant"] == "healthy"
    np.testing.assert_array_equal(data["true_dice"], np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="healthy_fraction"):
        generate_quality_dataset(net, inferer, tmp_path / "x", 1, seed=1, healthy_fraction=2.0, **kwargs)


def test_quality_split():
    """The last val_fraction of the cases validate: 400 cases at 0.2 -> 320 + 80 (train_quality.json's split)."""
    from monai_probseg.quality import quality_split

    training, validation = quality_split(400, 0.2)
    assert (training, validation) == (range(320), range(320, 400))
    assert quality_split(5, 0.0) == (range(5), range(5, 5))
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        quality_split(5, 1.0)
