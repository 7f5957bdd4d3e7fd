"""The allocator settings reach every run: an evaluation in a fresh process applies them (and
LANDSCAPE_MALLOC=0 leaves glibc alone)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import torch
from landscape import runtime
from landscape.data import TensorData
from landscape.engine import Evaluator
assert not runtime._done
Evaluator(torch.nn.Linear(3, 2), TensorData(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])))
print(runtime._done)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("env, expected", [({}, "True"), ({"LANDSCAPE_MALLOC": "0"}, "False")])
def test_allocator_tuned_by_the_evaluator(env, expected):
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
