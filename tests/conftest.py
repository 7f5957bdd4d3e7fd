"""Test configuration: Triton kernels run in the interpreter on the CPU.

TRITON_INTERPRET must be set before any kernel module (and triton itself) is imported.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture()
def work(tmp_path, monkeypatch, request):
    """A fresh working folder holding the requesting test module's tiny problem, made the current
    directory and importable (for `module:factory` specs). The module describes its problem with
    two optional names: WORK_FILES, {file name: text} written first (e.g. a user's model module;
    a module of the same name imported by another test's folder is forgotten), and
    make_work(folder), called afterwards to write its data and checkpoints."""
    for name, text in getattr(request.module, "WORK_FILES", {}).items():
        (tmp_path / name).write_text(text)
        if name.endswith(".py"):
            sys.modules.pop(name[:-3], None)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    make_work = getattr(request.module, "make_work", None)
    if make_work is not None:
        make_work(tmp_path)
    return tmp_path
