"""A tiny classification problem for command-line tests: a user model module, train/test tensors
and checkpoints in the current folder (helpers shared by test files, not tests)."""
from __future__ import annotations

import torch
from torch import nn

# A user's model factory: 6 inputs, a hidden layer of 8, 3 classes.
MLP_SOURCE = ("from torch import nn\n\ndef make(num_classes=3, **_):\n"
              "    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, num_classes))\n")


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def write_problem(module: str, source: str = MLP_SOURCE, samples: tuple[int, int] = (40, 30),
                  checkpoints: tuple[int, ...] = (1, 2)) -> list[str]:
    """Write `module`.py, train.pt and test.pt (seed 0) and m<seed>.pt for each checkpoint seed in
    the current folder; the common CLI arguments that use them."""
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(samples[0], 6, generator=g), torch.randn(samples[1], 6, generator=g)
    y, yt = torch.randint(0, 3, (samples[0],), generator=g), torch.randint(0, 3, (samples[1],), generator=g)
    with open(f"{module}.py", "w") as f:
        f.write(source)
    torch.save({"x": x, "y": y}, "train.pt")
    torch.save({"x": xt, "y": yt}, "test.pt")
    for seed in checkpoints:
        torch.manual_seed(seed)
        torch.save(mlp().state_dict(), f"m{seed}.pt")
    return ["--model", f"{module}:make", "--data", "tensors:train.pt", "--test-data", "tensors:test.pt", "--quiet"]
