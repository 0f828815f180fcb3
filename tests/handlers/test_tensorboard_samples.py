# Copyright (c) monai_probseg contributors
# Licensed under the Apache License, Version 2.0

from __future__ import annotations

import glob

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine  # noqa: E402
from monai.data import DataLoader, Dataset  # noqa: E402
from monai.engines import SupervisedEvaluator  # noqa: E402
from monai.transforms import FlattenSubKeysd  # noqa: E402

from monai_probseg.data import ambiguous_lesions_2d  # noqa: E402
from monai_probseg.handlers import TensorBoardSampleHandler  # noqa: E402
from monai_probseg.inferers import StochasticSlidingWindowInferer  # noqa: E402
from monai_probseg.networks.nets import StochasticSegmentationNetwork  # noqa: E402


class _Writer:
    def __init__(self):
        self.images = []

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.images.append((tag, np.asarray(image), step, dataformats))

    def flush(self):
        pass


def _item(b, spatial=(16, 16)):
    g = torch.Generator().manual_seed(b)
    return {
        "image": torch.randn(1, *spatial, generator=g),
        "label": torch.randint(0, 2, (3, *spatial), generator=g),
        "pred": {
            "seg": torch.randint(0, 2, (1, *spatial), generator=g),
            "samples": torch.randint(0, 2, (4, *spatial), generator=g),
            "entropy": torch.rand(1, *spatial, generator=g),
            "mutual_info": torch.rand(1, *spatial, generator=g),
        },
        "case_id": f"case{b}",
    }


def test_writes_grid_every_interval_with_step_transform():
    writer = _Writer()
    engine = Engine(lambda e, batch: [_item(b) for b in range(3)])
    handler = TensorBoardSampleHandler(
        writer, interval=2, keys={"raters": "label"}, max_cases=2, global_iter_transform=lambda e: 10 * e
    )
    handler.attach(engine)
    engine.run([0, 1], max_epochs=4)
    assert [step for _, _, step, _ in writer.images] == [20, 40]
    tag, image, _, fmt = writer.images[0]
    assert tag == "samples" and fmt == "HWC" and image.dtype == np.uint8 and image.shape[2] == 3
    cases = handler.cases([_item(b) for b in range(3)])
    assert len(cases) == 2 and sorted(cases[0]) == sorted(
        ["image", "raters", "seg", "samples", "entropy", "mutual_info", "case_id"]
    )
    # a batched dict works too, and a taller grid (more rows) gives a taller image
    batched = {k: torch.stack([_item(b)[k] for b in range(3)]) for k in ("image", "label")}
    assert len(handler.cases(batched)) == 2
    one = _Writer()
    TensorBoardSampleHandler(one, max_cases=1, keys={"raters": "label"}).attach(
        engine2 := Engine(lambda e, b: [_item(0)])
    )
    engine2.run([0], max_epochs=1)
    assert one.images[0][1].shape[0] < image.shape[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown panel"):
        TensorBoardSampleHandler(_Writer(), keys={"foo": "bar"})
    with pytest.raises(TypeError, match="add_image"):
        TensorBoardSampleHandler(object())
    with pytest.raises(KeyError, match="no 'image'"):
        TensorBoardSampleHandler(_Writer()).cases([{"label": torch.zeros(1, 4, 4)}])


def test_with_evaluator_and_summary_writer(tmp_path):
    cases = ambiguous_lesions_2d(2, (32, 32), num_annotators=3, seed=0)
    loader = DataLoader(Dataset(cases), batch_size=2)
    net = StochasticSegmentationNetwork(2, 1, 2, rank=2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    inferer = StochasticSlidingWindowInferer(roi_size=(32, 32), num_samples=3, keep_samples=True, seed=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=net,
        inferer=inferer,
        postprocessing=FlattenSubKeysd("pred", sub_keys=["seg", "samples", "entropy", "mutual_info"]),
    )
    handler = TensorBoardSampleHandler(log_dir=str(tmp_path), keys={"raters": "label"}, grid_kwargs={"num_samples": 3})
    handler.attach(evaluator)
    evaluator.run()
    handler.close()
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Tags()["images"] == ["samples"]
    assert acc.Images("samples")[0].width > acc.Images("samples")[0].height > 0
