"""Hostile command-line input ends in ONE line on stderr and exit status 2: never a traceback,
never a silently wrong result (overflowing grids, huge seeds and widths, factories that exit or
print, expanded-view and integer-key checkpoints, text files, boolean labels, unwritable names)."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_problem import MLP_SOURCE, write_problem

from landscape import cli
from landscape.core.errors import LandscapeError

# the user's model module, with two factories that misbehave
SOURCE = MLP_SOURCE + ("\nimport sys\n\n\ndef quits(num_classes=3, **_):\n    sys.exit(0)\n\n"
                       "\ndef chatty(num_classes=3, **_):\n    print('building the model...')\n"
                       "    return make(num_classes)\n")


@pytest.fixture()
def problem(tmp_path, monkeypatch):
    """A checkpoint of a user model and train/test tensors in the working folder."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return write_problem("input_hostile_user_mlp", SOURCE, samples=(20, 12), checkpoints=(1,))


def _refused(argv, capsys, *words) -> str:
    """Run the CLI; it must exit 2 with exactly one stderr line holding `words`, nothing on stdout."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("landscape: error:"), err
    assert out == ""
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


PLANE = ["plane", "m1.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3"]


# 1. a grid whose bounds overflow floating point
def test_overflowing_range_is_refused_naming_the_option(problem, capsys):
    _refused(["plane", "m1.pt", "--random", "filter", "--x", "-1e308:1e308:5", "--y", "-1:1:3", *problem], capsys, "--x", "too large")


# 2. seeds and model widths beyond what torch accepts / memory holds
def test_check_seed_bounds():
    from landscape.core.validate import check_seed

    assert check_seed(0) == 0 and check_seed(2**63 - 2, offset=1) == 2**63 - 2
    for bad in (99999999999999999999999, 2**63, -1, True, "3"):
        with pytest.raises(LandscapeError, match="--seed"):
            check_seed(bad)
    with pytest.raises(LandscapeError, match="2\\*\\*63"):
        check_seed(2**63 - 1, offset=1)  # seed + 1 would overflow


def test_huge_seed_is_refused(problem, capsys):
    _refused([*PLANE, "--seed", "99999999999999999999999", *problem], capsys, "--seed", "2**63")


def test_huge_model_width_is_refused_with_the_bound(problem, capsys):
    _refused([*PLANE, *problem, "--model", "small_cnn:width=99999999999"], capsys, "width", "4096")


# 3. user factories that exit, or print to stdout
def test_factory_calling_sys_exit_is_a_one_line_error(problem, capsys):
    _refused([*PLANE, *problem, "--model", "input_hostile_user_mlp:quits"], capsys, "input_hostile_user_mlp:quits", "exit")


def test_factory_printing_does_not_break_json(problem, capsys):
    code = cli.main([*PLANE, "--json", *problem, "--model", "input_hostile_user_mlp:chatty"])
    out, err = capsys.readouterr()
    assert code == 0, err
    json.loads(out)
    assert "building the model..." in err


# 4. an expanded (stride-0) tensor: 8 KB on disk, 10 TB in its shape
def test_expanded_view_in_checkpoint_is_refused_naming_the_key(problem, capsys):
    state = torch.load("m1.pt", weights_only=True)
    state["extra.weight"] = torch.zeros(1).expand(10**10, 256)
    torch.save(state, "expanded.pt")
    _refused(["plane", "expanded.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", *problem], capsys,
             "expanded.pt", "extra.weight", "expanded view")


def test_head_classes_ignores_expanded_views_and_bounds_the_class_count(problem):
    from landscape.store.refs import head_classes

    state = torch.load("m1.pt", weights_only=True)
    state["extra.weight"] = torch.zeros(1).expand(10**10, 256)
    torch.save(state, "expanded.pt")
    with pytest.raises(LandscapeError, match="expanded view"):  # never 10**10 classes: the checkpoint is named
        head_classes("expanded.pt")
    torch.save({"w": torch.zeros(10**6 + 1, 1, dtype=torch.float16)}, "tall.pt")
    with pytest.raises(LandscapeError, match="tall.pt"):
        head_classes("tall.pt")


# 5. integer keys, and a text file given as a checkpoint
def test_integer_keys_are_refused(problem, capsys):
    torch.save({0: torch.zeros(3)}, "ints.pt")
    _refused(["plane", "ints.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", *problem], capsys,
             "ints.pt", "keys must be strings")


def test_text_file_as_checkpoint_is_refused(problem, capsys):
    with open("notes.pt", "w") as f:
        f.write("hello, these are my notes\n")
    _refused(["plane", "notes.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", *problem], capsys,
             "notes.pt", "not a PyTorch checkpoint", "text file")


# 6. boolean labels would silently be classes 0 and 1
def test_boolean_labels_are_refused(problem, capsys):
    data = torch.load("train.pt", weights_only=True)
    torch.save({"x": data["x"], "y": data["y"] > 0}, "boolean.pt")
    _refused([*PLANE, *problem, "--data", "tensors:boolean.pt"], capsys, "boolean.pt", "integer class indices")


# 7. names that cannot be file names
def test_check_name_bytes():
    from landscape.core.validate import check_name_bytes

    assert check_name_bytes("a" * 200) == "a" * 200
    with pytest.raises(LandscapeError, match="bytes"):
        check_name_bytes("é" * 110)  # 110 characters, 220 bytes: over 255 with '.partial-' and decoration
    with pytest.raises(LandscapeError, match="UTF-8"):
        check_name_bytes("bad\udcff")


@pytest.mark.parametrize("name, word", [("é" * 110, "bytes"), ("bad\udcff", "UTF-8")])
def test_unwritable_names_are_refused(problem, capsys, name, word):
    _refused([*PLANE, "--out", "s", "--name", name, *problem], capsys, "name", word)
