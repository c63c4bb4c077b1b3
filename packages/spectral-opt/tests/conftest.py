import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

# tiny shapes: one intra-op thread is faster than two threads fighting over shared cores
torch.set_num_threads(1)
