"""One torch thread for these tests: their models are tiny, and on a CPU shared with other jobs two OpenMP threads
wait on each other at every small op (the fine-tuning tests ran 10-20x slower that way). Restored afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")  # before the modules' own fixtures (pretraining runs)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
