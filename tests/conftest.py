import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)  # the tests use small tensors: extra threads cost more than they give
# batching="auto" picks by correctness only (deterministic); tests/test_auto_batching.py turns timing back on
os.environ["ECOP_WRAP_BATCHING_BENCHMARK"] = "0"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
