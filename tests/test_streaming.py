"""Data sets read from disk batch by batch (`dataset:module:factory`, `imagefolder:`) give exactly
the numbers of the same data in memory, hold only a bounded head in memory, and report a bad
sample by its index in the whole data set."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from landscape.cli import main
from landscape.core.data import StreamData, load_data
from landscape.core.models import build_model
from landscape.evaluate.engine import Evaluator

USER_DATA = textwrap.dedent("""
    import torch
    from torch.utils.data import Dataset

    class Generated(Dataset):
        '''Samples made on demand: nothing is held, whatever the size.'''
        def __init__(self, n, seed, bad_at=None):
            self.n, self.seed, self.bad_at, self.reads = n, seed, bad_at, 0
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            self.reads += 1
            g = torch.Generator().manual_seed(self.seed * 100003 + i)
            x = torch.randn(3, 8, 8, generator=g)
            if i == self.bad_at:
                x[0, 0, 0] = float("nan")
            return x, int(torch.randint(0, 4, (1,), generator=g))

    def train(split="train"):
        return Generated(70, 1 if split == "train" else 2)

    def test():
        return Generated(30, 2)

    def broken():
        return Generated(50, 3, bad_at=37)
""")


WORK_FILES = {"user_data.py": USER_DATA}


def make_work(folder):
    """The `work` fixture's problem (tests/conftest.py): the generated data sets saved as tensors
    and two tiny_cnn checkpoints."""
    import user_data

    for name, ds in (("train", user_data.train()), ("test", user_data.test())):
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        torch.save({"x": torch.stack(xs), "y": torch.tensor(ys)}, f"{name}.pt")
    for i in range(2):
        torch.manual_seed(i)
        torch.save(build_model("tiny_cnn", 4, (3, 8, 8)).state_dict(), f"m{i}.pt")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("command", [
    ["interpolate", "m0.pt", "m1.pt", "--num", "4"],
    ["plane", "m0.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:2", "--bn", "recompute",
     "--bn-samples", "40", "--batch-size", "16"],
])
def test_streamed_equals_in_memory(work, capsys, command):
    stream = run(capsys, *command, "--model", "tiny_cnn", "--data", "dataset:user_data:train",
                 "--test-data", "dataset:user_data:test", "--json", "--quiet")
    memory = run(capsys, *command, "--model", "tiny_cnn", "--data", "tensors:train.pt", "--test-data",
                 "tensors:test.pt", "--json", "--quiet")
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_allclose(np.asarray(stream[key], float), np.asarray(memory[key], float), rtol=1e-6)


def test_ensemble_streamed(work, capsys):
    args = ["ensemble", "m0.pt", "m1.pt", "--model", "tiny_cnn", "--json", "--quiet", "--batch-size", "8"]
    stream = run(capsys, *args, "--data", "dataset:user_data:test")
    memory = run(capsys, *args, "--data", "tensors:test.pt")
    assert stream == memory


def test_only_a_bounded_head_is_in_memory(work):
    data = load_data("dataset:user_data:train")
    assert isinstance(data, StreamData)
    ev = Evaluator(build_model("tiny_cnn", 4, (3, 8, 8)), data, bn_mode="recompute", bn_samples=20, batch_size=16)
    assert ev.datasets == {} and ev._bn_x.shape[0] == 20
    data.dataset.reads = 0
    ev.evaluate(torch.cat([p.detach().reshape(-1) for p in ev.model.parameters()]))
    assert data.dataset.reads == len(data)  # read once per point, batch by batch


def test_bad_sample_named_by_its_index(work, capsys):
    code = main(["interpolate", "m0.pt", "m1.pt", "--num", "3", "--model", "tiny_cnn", "--data",
                 "dataset:user_data:broken", "--batch-size", "16", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sample 37 holds NaN" in err[0]


def test_imagefolder_streams(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path / 'imgs'}")
    assert isinstance(data, StreamData) and len(data) == 6 and data.input_shape == (3, 224, 224)
    ys = torch.cat([y for _, y in data.batches(4)])
    assert ys.tolist() == [0, 0, 0, 1, 1, 1]
