"""Seed-paired comparisons and the tests the study's verdicts use (experiments.verdicts documents
the rules): a difference's Student-t interval over seeds, and superiority, non-inferiority,
equivalence (TOST) and "exceeds a level" on it, each returning a verdict."""
from __future__ import annotations

import math
import statistics
from typing import Any

from scipy import stats as sps

# The study config's [verdicts] table and its defaults, declared before a run. confidence: the
# two-sided interval of a seed-paired difference (90%: one-sided tests and TOST at 5%). Margins,
# the differences that do not matter: 0.5 points of accuracy and 0.01 NLL, below the paper's
# smallest reported gaps between methods (about a point); a train-loss barrier of 0.1 nats
# between a member and the fine-tuned model, the level a member must exceed to be out of the
# basin (Local DE's members, one basin by construction, stay near 0.01 on the embedded problem;
# Global DE's are above 1).
DEFAULTS = {"confidence": 0.90, "acc_margin": 0.005, "nll_margin": 0.01, "barrier_margin": 0.1}
POWER = 0.8


def compare(a: list[Any] | None, b: list[Any] | float | None, higher_is_better: bool = True,
            confidence: float = DEFAULTS["confidence"]) -> dict:
    """Seed-paired difference of A and B (B may be a constant) with its interval; see the module doc."""
    if a is None or b is None:
        return {"outcome": "missing"}
    bs = list(b) if isinstance(b, (list, tuple)) else [b] * len(a)
    pairs = [(x, y) for x, y in zip(a, bs) if x is not None and y is not None]
    if not pairs:
        return {"outcome": "missing"}
    sign = 1.0 if higher_is_better else -1.0
    d = [sign * (float(x) - float(y)) for x, y in pairs]
    n = len(d)
    if not all(math.isfinite(v) for v in d):
        return {"outcome": "undecided", "n": n, "diff": float("nan")}
    mean = math.fsum(d) / n
    out = {"outcome": "ok", "n": n, "diff": mean, "confidence": confidence, "sign": sign}
    if n < 2:
        return {**out, "lo": None, "hi": None, "half": None, "detectable": None}
    se = statistics.stdev(d) / math.sqrt(n)
    t = float(sps.t.ppf((1 + confidence) / 2, n - 1))
    detect = (t + float(sps.t.ppf(POWER, n - 1))) * se
    return {**out, "lo": mean - t * se, "hi": mean + t * se, "half": t * se, "detectable": detect}


def _no_interval(c: dict) -> str | None:
    """The verdict when a comparison cannot be tested, else None."""
    if c["outcome"] in ("missing", "undecided"):
        return "undecided"
    if c.get("lo") is None:
        return "inconclusive"
    return None


def superiority(c: dict) -> str:
    """A beats B: the interval above 0."""
    c["test"], c["margin"] = "superiority", 0.0
    v = _no_interval(c)
    return v or ("holds" if c["lo"] > 0 else "does not hold" if c["hi"] < 0 else "inconclusive")


def non_inferiority(c: dict, margin: float) -> str:
    """A matches or beats B: the interval above −margin."""
    c["test"], c["margin"] = "non-inferiority", margin
    v = _no_interval(c)
    return v or ("holds" if c["lo"] > -margin else "does not hold" if c["hi"] < -margin else "inconclusive")


def equivalence(c: dict, margin: float) -> str:
    """A matches B (TOST): the interval inside ±margin."""
    c["test"], c["margin"] = "equivalence", margin
    v = _no_interval(c)
    if v:
        return v
    if -margin < c["lo"] and c["hi"] < margin:
        return "holds"
    return "does not hold" if c["lo"] >= margin or c["hi"] <= -margin else "inconclusive"


def exceeds(values: list[Any] | None, level: float, confidence: float) -> tuple[str, dict]:
    """The seeds' mean of a measure above a declared level (one sample)."""
    c = compare(values, level, confidence=confidence)
    v = superiority(c)
    c["test"], c["level"] = "exceeds", level
    return v, c


def combine(*verdicts: str) -> str:
    """Several measures' verdicts on one claim (see the module doc)."""
    if any(v == "undecided" for v in verdicts):
        return "undecided"
    if all(v == "holds" for v in verdicts):
        return "holds"
    if all(v == "does not hold" for v in verdicts):
        return "does not hold"
    if "holds" in verdicts and "does not hold" in verdicts:
        return "mixed"
    return "inconclusive"


def cmp_text(c: dict, pct: bool) -> str:
    """A comparison in words: difference, interval, margin, the smallest detectable difference."""
    if c["outcome"] in ("missing", "undecided"):
        return c["outcome"]
    f = (lambda x: f"{100 * x:+.2f} points") if pct else (lambda x: f"{x:+.3f}")
    g = (lambda x: f"{100 * x:.2f}") if pct else (lambda x: f"{x:.3f}")
    test = c.get("test", "")
    if c.get("lo") is None:
        return f"difference {f(c['diff'])} on {c['n']} seed (no interval: {test} not testable)"
    conf = f"{100 * c['confidence']:g}%"
    where = f"{conf} interval [{f(c['lo'])}, {f(c['hi'])}]"
    if test == "exceeds":
        lvl = c["level"]
        return (f"{g(c['diff'] + lvl)}, {conf} interval [{g(c['lo'] + lvl)}, {g(c['hi'] + lvl)}], against the level "
                f"{g(lvl)}; {test}; detectable {g(c['detectable'])}")
    margin = f", margin ±{g(c['margin'])}" if test in ("non-inferiority", "equivalence") else ""
    return f"difference {f(c['diff'])}, {where}{margin}; {test}; detectable {g(c['detectable'])}"
