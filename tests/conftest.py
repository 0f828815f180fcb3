from __future__ import annotations

import torch

# each pytest-xdist worker gets one core; tests use small shapes
torch.set_num_threads(1)
