"""The allocator settings reach every run: an evaluation in a fresh process applies them (and
LANDSCAPE_MALLOC=0 leaves glibc alone)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import torch
from landscape.core import allocator
from landscape.core.data import TensorData
from landscape.evaluate.engine import Evaluator
assert not allocator._done
Evaluator(torch.nn.Linear(3, 2), TensorData(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])))
print(allocator._done)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("env, expected", [({}, "True"), ({"LANDSCAPE_MALLOC": "0"}, "False")])
def test_allocator_tuned_by_the_evaluator(env, expected):
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_first_layer_share_matches_torchs_flop_counter():
    """The hook-based count that picks the CPU path agrees with torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from landscape.core.models import build_model
    from landscape.evaluate.engine import first_layer_flop_share

    for spec, shape in (("small_cnn", (3, 32, 32)), ("mlp", (3, 16, 16)), ("tiny_cnn", (3, 8, 8))):
        model = build_model(spec, 10, shape).eval()
        x = torch.randn(3, *shape)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        per_module = counter.get_flop_counts()
        first = next(name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        own = sum(next(v for k, v in per_module.items() if k.endswith("." + first) or k == first).values())
        assert first_layer_flop_share(model, x) == pytest.approx(own / counter.get_total_flops(), rel=1e-9)
