from __future__ import annotations

import math

import pytest
import torch

from monai_probseg.losses import ELBOLoss, cross_entropy_map

LOG2 = math.log(2.0)
KL_HAND = LOG2 + 2.0 / 8.0 - 0.5  # KL(N(0, 1) || N(1, 2^2))


def _outputs(logits=None, latent_dim=1, requires_grad=False):
    """A tiny hand-computable case: 2 voxels, CE = log 2 + log 4 for target [[0, 1]]; KL = KL_HAND per dim."""
    if logits is None:
        logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    logits = logits.clone().requires_grad_(requires_grad)
    zeros = torch.zeros(logits.shape[0], latent_dim)
    return {
        "logits": logits,
        "posterior_mean": zeros.clone().requires_grad_(requires_grad),
        "posterior_log_sigma": zeros.clone().requires_grad_(requires_grad),
        "prior_mean": (zeros + 1.0).requires_grad_(requires_grad),
        "prior_log_sigma": (zeros + LOG2).requires_grad_(requires_grad),
    }


TARGET = torch.tensor([[[[0, 1]]]])  # (1, 1, 1, 2)
CE_SUM = LOG2 + math.log(4.0)


def test_hand_computed_elbo():
    terms = ELBOLoss(beta=0.5)(_outputs(), TARGET)
    assert terms["reconstruction"].item() == pytest.approx(CE_SUM, abs=1e-5)
    assert terms["kl"].item() == pytest.approx(KL_HAND, abs=1e-5)
    assert terms["beta"].item() == 0.5
    assert terms["loss"].item() == pytest.approx(CE_SUM + 0.5 * KL_HAND, abs=1e-5)
    mean_terms = ELBOLoss(beta=2.0, reconstruction="ce_mean")(_outputs(), TARGET)
    assert mean_terms["loss"].item() == pytest.approx(CE_SUM / 2 + 2.0 * KL_HAND, abs=1e-5)


def test_one_hot_target_and_kl_fallback():
    one_hot = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    a = ELBOLoss()(_outputs(), TARGET)
    b = ELBOLoss()(_outputs(), one_hot)
    assert torch.allclose(a["loss"], b["loss"])
    c = ELBOLoss()(_outputs(), TARGET[:, 0])  # (B, *spatial) label map
    assert torch.allclose(a["loss"], c["loss"])
    # only a per-item "kl" (as other models may give)
    d = ELBOLoss()({"logits": _outputs()["logits"], "kl": torch.tensor([KL_HAND])}, TARGET)
    assert torch.allclose(a["loss"], d["loss"])


def test_batch_reduction():
    logits = torch.randn(3, 4, 5, 5)
    target = torch.randint(0, 4, (3, 1, 5, 5))
    outputs = {"logits": logits, "kl": torch.tensor([1.0, 2.0, 3.0])}
    per_item = ELBOLoss(reduction="none")(outputs, target)["loss"]
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0], reduction="none").flatten(1).sum(1)
    assert torch.allclose(per_item, ce + torch.tensor([1.0, 2.0, 3.0]), atol=1e-4)
    assert torch.allclose(ELBOLoss()(outputs, target)["loss"], per_item.mean())
    assert torch.allclose(ELBOLoss(reduction="sum")(outputs, target)["loss"], per_item.sum())


def test_linear_kl_annealing_and_step_buffer():
    loss = ELBOLoss(beta=2.0, kl_annealing=(2, 6))
    weights = [loss(_outputs(), TARGET)["beta"].item() for _ in range(8)]
    assert weights == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0])
    assert int(loss.state_dict()["step"]) == 8
    # the loss value uses the current weight: step 8 -> beta = 2
    assert loss(_outputs(), TARGET)["loss"].item() == pytest.approx(CE_SUM + 2.0 * KL_HAND, abs=1e-5)
    # eval mode does not advance the counter; a restored counter resumes the schedule
    loss.eval()
    loss(_outputs(), TARGET)
    assert int(loss.step) == 9
    other = ELBOLoss(beta=2.0, kl_annealing=(2, 6))
    other.load_state_dict({"step": torch.tensor(4)})
    assert other(_outputs(), TARGET)["beta"].item() == pytest.approx(1.0)


def test_callable_annealing():
    loss = ELBOLoss(beta=3.0, kl_annealing=lambda step: 0.1 * step)
    assert [loss(_outputs(), TARGET)["beta"].item() for _ in range(3)] == pytest.approx([0.0, 0.3, 0.6])


def test_free_bits():
    # dim 0: KL_HAND; dim 1: identical distributions, KL 0
    outputs = _outputs(latent_dim=2, requires_grad=True)
    with torch.no_grad():
        outputs["prior_mean"][:, 1] = 0.0
        outputs["prior_log_sigma"][:, 1] = 0.0
    terms = ELBOLoss(free_bits=0.4)(outputs, TARGET)  # floor 0.2 nats per dimension
    assert terms["kl"].item() == pytest.approx(KL_HAND, abs=1e-5)  # reported: the real KL
    assert terms["loss"].item() == pytest.approx(CE_SUM + KL_HAND + 0.2, abs=1e-5)
    terms["loss"].backward()
    assert outputs["posterior_mean"].grad[0, 1] == 0 and outputs["posterior_log_sigma"].grad[0, 1] == 0
    assert outputs["prior_mean"].grad[0, 0] != 0  # the dimension above its floor still gets gradients
    with pytest.raises(ValueError, match="free_bits needs"):
        ELBOLoss(free_bits=1.0)({"logits": outputs["logits"], "kl": torch.ones(1)}, TARGET)


def test_geco_multiplier_and_moving_average():
    kappa, step_size, alpha = 0.1, 0.5, 0.9
    loss = ELBOLoss(geco={"kappa": kappa, "step_size": step_size, "alpha": alpha})
    c0 = CE_SUM / 2 - kappa  # per-voxel constraint, > 0: reconstruction worse than kappa
    outputs = _outputs(requires_grad=True)
    terms = loss(outputs, TARGET)
    # first step: the moving average starts at the constraint, lambda = 1
    assert terms["geco_lambda"].item() == 1.0
    assert terms["loss"].item() == pytest.approx(1.0 * 2 * c0 + KL_HAND, abs=1e-5)
    assert loss.geco_constraint_ma.item() == pytest.approx(c0, abs=1e-6)
    lam1 = math.exp(step_size * c0)
    assert loss.geco_lambda.item() == pytest.approx(lam1, rel=1e-5)  # went up
    # the gradient flows through the current reconstruction, scaled by lambda
    terms["loss"].backward()
    ref = _outputs(requires_grad=True)
    ELBOLoss(beta=0.0)(ref, TARGET)["loss"].backward()
    assert torch.allclose(outputs["logits"].grad, ref["logits"].grad)

    # second step with a better reconstruction: EMA mixes both, the loss value uses the EMA
    better = torch.tensor([[[[2.0, 2.0]], [[0.0, 4.0]]]])
    ce1 = cross_entropy_map(better, TARGET).sum().item()
    c1 = ce1 / 2 - kappa
    terms = loss(_outputs(better), TARGET)
    ma = alpha * c0 + (1 - alpha) * c1
    assert loss.geco_constraint_ma.item() == pytest.approx(ma, abs=1e-5)
    assert terms["loss"].item() == pytest.approx(lam1 * 2 * ma + KL_HAND, rel=1e-5)
    assert loss.geco_lambda.item() == pytest.approx(lam1 * math.exp(step_size * ma), rel=1e-5)


def test_geco_lambda_goes_down_below_kappa_and_is_clamped_and_checkpointed():
    loss = ELBOLoss(geco={"kappa": 5.0, "step_size": 10.0, "lambda_min": 0.01})
    for _ in range(3):
        loss(_outputs(), TARGET)
    assert loss.geco_lambda.item() == pytest.approx(0.01)  # reconstruction far better than kappa: shrinks to the floor
    up = ELBOLoss(geco={"kappa": 0.0, "step_size": 100.0, "lambda_max": 50.0})
    for _ in range(3):
        up(_outputs(), TARGET)
    assert up.geco_lambda.item() == pytest.approx(50.0)
    state = up.state_dict()
    assert set(state) == {"step", "geco_lambda", "geco_constraint_ma"}
    resumed = ELBOLoss(geco={"kappa": 0.0, "step_size": 100.0, "lambda_max": 50.0})
    resumed.load_state_dict(state)
    assert resumed(_outputs(), TARGET)["geco_lambda"].item() == pytest.approx(50.0)


def test_no_nan_with_extreme_logits():
    logits = torch.tensor([[[[1e6, -1e6]], [[-1e6, 1e6]]]])
    outputs = _outputs(logits, requires_grad=True)
    terms = ELBOLoss(geco=True)(outputs, TARGET)
    assert all(torch.isfinite(v).all() for v in terms.values())
    terms["loss"].backward()
    assert torch.isfinite(outputs["logits"].grad).all()


def test_input_errors():
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 1\]"):
        ELBOLoss()(_outputs(), TARGET + 1)
    with pytest.raises(ValueError, match="non-integer"):
        ELBOLoss()(_outputs(), TARGET.float() / 2)
    with pytest.raises(ValueError, match="to match logits"):
        ELBOLoss()(_outputs(), torch.zeros(1, 1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="channels, expected 1"):
        ELBOLoss()(_outputs(), torch.zeros(1, 3, 1, 2))
    with pytest.raises(ValueError, match="C >= 2"):
        ELBOLoss()({"logits": torch.zeros(1, 1, 1, 2), "kl": torch.zeros(1)}, TARGET)
    with pytest.raises(ValueError, match="'logits'"):
        ELBOLoss()(torch.zeros(1, 2, 1, 2), TARGET)
    with pytest.raises(ValueError, match="'kl' or the Gaussian parameters"):
        ELBOLoss()({"logits": torch.zeros(1, 2, 1, 2)}, TARGET)
    with pytest.raises(ValueError, match="reconstruction"):
        ELBOLoss(reconstruction="dice")
    with pytest.raises(ValueError, match="kl_annealing"):
        ELBOLoss(kl_annealing=(5, 2))
    with pytest.raises(ValueError, match="unknown geco settings"):
        ELBOLoss(geco={"kapa": 0.1})
    with pytest.raises(ValueError, match="beta"):
        ELBOLoss(beta=-1.0)
