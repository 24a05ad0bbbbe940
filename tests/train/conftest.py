"""Fixtures of the engine's tests."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matrices on a shared 2-core machine: one thread avoids OpenMP spinning against other jobs.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
