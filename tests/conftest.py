import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)  # the tests use small tensors: extra threads cost more than they give


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
