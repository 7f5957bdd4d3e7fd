"""Test configuration: Triton kernels run in the interpreter on the CPU.

TRITON_INTERPRET must be set before any kernel module (and triton itself) is imported.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
