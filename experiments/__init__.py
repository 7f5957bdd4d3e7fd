"""The pre-train-basin study (Sadrtdinov et al., NeurIPS 2023) on top of the landscape toolkit.

    from experiments import load_config, run_study, demo
    summary = demo(quick=True, out="landscape-demo-quick")

Modules: data (the embedded transfer problem, CIFAR/ImageFolder tasks), real_digits (MNIST and
scikit-learn's digits from the installed packages: the `digits` kind), models, training
(loop and schedules), samplers (Local/Global DE, SSE, StarSSE, FGE, SWA), config (TOML),
study (the resumable pipeline), records (a unit's predictions and labels in the store),
seed_analysis (by stage, on landscape.analyses), report (summary, verdicts, figures, markdown),
files (atomic output files), cli (`landscape run`, `landscape demo`).
"""
from __future__ import annotations

from typing import Any

# The study's modules are imported when a study runs, not when `landscape` starts (the CLI loads
# this package for its `run` and `demo` commands on every call).


def demo_out(quick: bool) -> str:
    """The demo's output folder when none is given."""
    return "landscape-demo-quick" if quick else "landscape-demo"


def load_config(*args, **kwargs):
    from .config import load_config as _load

    return _load(*args, **kwargs)


def run_study(*args, **kwargs) -> dict[str, Any]:
    from .study import run_study as _run

    return _run(*args, **kwargs)


def demo(quick: bool = False, out: str | None = None, **kwargs) -> dict[str, Any]:
    """Run the embedded default study (`landscape demo [--quick]`)."""
    from .study import run_study as _run

    return _run("demo_quick" if quick else "demo", out or demo_out(quick), **kwargs)


__all__ = ["demo", "demo_out", "load_config", "run_study"]
