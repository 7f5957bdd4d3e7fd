"""Hostile study configs and failed first runs: one line on stderr and exit status 2, never a traceback;
a study whose first write fails is resumed by its rerun."""
import os
import resource
import subprocess
import sys

import pytest

from landscape.cli import main


def cli(capsys, *argv):
    """`landscape ARGV` in this process: (exit status, stderr lines)."""
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err.strip().splitlines()


def one_line(capsys, *argv, says):
    rc, lines = cli(capsys, *argv)
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("landscape: error: "), lines
    assert says in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("name, text, says", [
    ("tables.toml", "[study]\nname = 'x'\n[data]\nseed = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n", "nested too deeply"),
    ("arrays.toml", "x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    ("binary.toml", bytes(range(256)) * 10, "is not a text file"),
    ("huge.toml", "# a comment\n" * 200_000, "larger than"),
])
def test_hostile_toml_file_is_one_line(tmp_path, capsys, name, text, says):
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    line = one_line(capsys, "run", str(path), "--out", str(tmp_path / "out"), says=says)
    assert name in line
    assert not (tmp_path / "out").exists()


def test_shipped_configs_still_load():
    from experiments.config import SHIPPED, load_config
    from experiments.suite import is_suite, suite_studies
    for name in SHIPPED:
        if is_suite(name):
            assert len(suite_studies(name)[1]) >= 2
        else:
            load_config(name, check_paths=False)


@pytest.mark.parametrize("setting, says", [
    ("pretrain.epochs=100000000000", "pretrain.epochs must be at most 100,000"),
    ("pretrain.epochs=1e20", "pretrain.epochs must be an integer"),
    ("finetune.epochs=1000000", "finetune.epochs must be at most 100,000"),
    ("scratch.epochs=1000000", "scratch.epochs must be at most 100,000"),
    ("methods.swa.epochs=1000000", "methods.swa.epochs must be at most 100,000"),
    ("methods.fge.cycle_epochs=1e12", "cycle_epochs must be at most 100,000"),
    ("study.members=100000000", "study.members must be at most 1,000"),
    ("methods.local_de.members=100000000", "methods.local_de.members must be at most 1,000"),
    ("pretrain.checkpoints=100000000", "pretrain.checkpoints must be at most 1,000"),
    ("model.width=100000000", "model.width must be at most 4,096"),
])
def test_huge_counts_are_refused_with_their_bound(tmp_path, capsys, setting, says):
    # --out is a file: a config that passes validation is refused right after it (never trained)
    (tmp_path / "out").write_text("")
    one_line(capsys, "run", "tiny", "--out", str(tmp_path / "out"), "--set", setting, says=says)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "", "a\\b", "tab\there", "new\nline"])
def test_study_name_must_be_a_plain_name(tmp_path, capsys, name):
    from experiments.config import load_config
    from landscape.core.errors import LandscapeError
    with pytest.raises(LandscapeError, match="study.name must be a plain name"):
        load_config({**_tiny_raw(), "study": {**_tiny_raw()["study"], "name": name}})
    if name == "../../x":
        (tmp_path / "out").write_text("")  # refused after the config, should the config pass
        one_line(capsys, "run", "tiny", "--out", str(tmp_path / "out"), "--set", f"study.name={name}",
                 says="study.name must be a plain name")


def _tiny_raw():
    import tomllib

    from experiments.config import shipped_path
    with open(shipped_path("tiny"), "rb") as f:
        return tomllib.load(f)


def test_first_run_failing_on_its_first_write_is_resumed(tmp_path):
    """A file size limit fails the study writing DIR/data/test.pt (exit 1); the rerun without the
    limit accepts the folder (the store was made and marked first) and finishes (exit 0)."""
    out = tmp_path / "out"
    env = {**os.environ, "LANDSCAPE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "landscape", "run", "tiny", "--out", str(out), "--quiet", "--no-cache"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000)))
    assert first.returncode == 1, first.stderr
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("landscape: error: ") and "Traceback" not in first.stderr, lines
    assert os.path.isfile(out / "results" / "store.json")
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert os.path.isfile(out / "summary.json") and os.path.isfile(out / "data" / "test.pt")
