from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from monai_probseg.metrics import plane_differences, seam_ratio, window_borders, window_transitions


def test_window_borders_match_monai_scan():
    # interval int(48 * 0.75) = 36: windows [0, 48), [36, 84), [48, 96) (the last one flush with the end)
    assert window_borders((96, 96, 96), 48, 0.25) == [[36, 48, 84]] * 3
    assert window_borders((64, 32), (32, 32), 0.5) == [[16, 32, 48], []]
    assert window_borders((20,), 40, 0.25) == [[]]  # one window covers the image
    # the borders are where a constant-blended, window-indexed prediction changes value
    counter = iter(range(100))

    def predictor(window):
        return torch.full_like(window, float(next(counter)))

    out = sliding_window_inference(torch.zeros(1, 1, 96), 48, 1, predictor, overlap=0.25, mode="constant")
    jumps = torch.nonzero(out[0, 0, 1:] != out[0, 0, :-1]).flatten() + 1
    assert jumps.tolist() == window_borders((96,), 48, 0.25)[0]


def test_window_transitions_are_where_gaussian_blending_changes_window():
    # interval 12: starts 0, 12, 24, 36, 48 -> transitions (s_i + s_{i+1} + 16) // 2
    assert window_transitions((64, 64), 16, 0.25) == [[14, 26, 38, 50]] * 2
    assert window_transitions((20,), 40, 0.25) == [[]]
    counter = iter(range(100))

    def predictor(window):
        return torch.full_like(window, float(next(counter)))

    out = sliding_window_inference(torch.zeros(1, 1, 64), 16, 1, predictor, overlap=0.25, mode="gaussian")[0, 0]
    # window i's value gives way to window i + 1's between voxels p - 1 and p
    for i, p in enumerate(window_transitions((64,), 16, 0.25)[0]):
        assert float(out[p - 1]) < i + 0.5 < float(out[p])


def test_plane_differences_and_seam_ratio_values():
    ramp = torch.arange(6.0).view(1, 6, 1).expand(2, 6, 3)
    torch.testing.assert_close(plane_differences(ramp, axis=1), torch.ones(5))
    # a smooth ramp has no seam: ratio 1
    assert float(seam_ratio(ramp, [3], axis=1)) == pytest.approx(1.0)
    # steps of 1 everywhere, plus an extra jump of 4 at position 3 (between voxels 2 and 3)
    step = ramp.clone()
    step[:, 3:] += 4
    terms = seam_ratio(step, [3], axis=1, return_terms=True)
    assert float(terms["border"]) == pytest.approx(5.0)
    assert float(terms["interior"]) == pytest.approx(1.0)
    assert float(terms["ratio"]) == pytest.approx(5.0)
    # margin 1 leaves positions 2 and 4 out of the interior; a constant volume gives 1 (0 / 0)
    assert float(seam_ratio(step, [3], axis=1, margin=1)) == pytest.approx(5.0)
    assert float(seam_ratio(torch.zeros(1, 6), [3], axis=1)) == 1.0
    with pytest.raises(ValueError, match="window_borders"):
        seam_ratio(step, [6], axis=1)
    with pytest.raises(ValueError, match="empty"):
        seam_ratio(step, [], axis=1)
