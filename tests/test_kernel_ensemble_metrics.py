"""Fused ensemble metrics: reference vs numpy, torch CPU path and Triton (interpreter) vs reference."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from kernels.ensemble import EnsembleMetrics, ensemble_metrics, ensemble_metrics_reference

# The package exports the function under the module's name, so fetch the module itself.
em = importlib.import_module("kernels.ensemble")

IMPLS = ["torch", "triton"]
FLOAT_FIELDS = ["nll", "conf", "brier", "ece", "bin_conf_sum", "member_nll"]
EXACT_FIELDS = ["acc", "bin_count", "bin_correct", "member_acc"]


def _inputs(M: int, N: int, C: int, scale: float = 3.0, dtype: torch.dtype = torch.float32):
    logits = (torch.randn(M, N, C, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, C, (N,))
    return logits, labels


def _assert_close(got: EnsembleMetrics, want: EnsembleMetrics, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert got.n_samples == want.n_samples
    for f in FLOAT_FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert a.dtype == torch.float64 and a.device.type == "cpu", f
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, f=f: f"{f}: {m}")
    for f in EXACT_FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=lambda m, f=f: f"{f}: {m}")


def _numpy_metrics(x: np.ndarray, y: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Independent fp64 check: average softmax probabilities directly in linear space."""
    M, N, C = x.shape
    probs = softmax(x, axis=-1)
    member_logp = x - logsumexp(x, axis=-1, keepdims=True)
    out: dict[str, list] = {k: [] for k in ("nll", "acc", "conf", "brier", "ece", "count")}
    for m in range(1, M + 1):
        p = probs[:m].mean(0)
        conf, pred = p.max(-1), p.argmax(-1)
        correct = pred == y
        onehot = np.eye(C)[y]
        out["nll"].append(-np.log(p[np.arange(N), y]).mean())
        out["acc"].append(correct.mean())
        out["conf"].append(conf.mean())
        out["brier"].append(((p - onehot) ** 2).sum(-1).mean())
        ece, count = 0.0, []
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            sel = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= 1.0))
            count.append(sel.sum())
            if sel.any():
                ece += abs(correct[sel].mean() - conf[sel].mean()) * sel.sum() / N
        out["ece"].append(ece)
        out["count"].append(count)
    res = {k: np.array(v, dtype=np.float64) for k, v in out.items()}
    res["member_acc"] = (x.argmax(-1) == y).mean(1)
    res["member_nll"] = -member_logp[:, np.arange(N), y].mean(1)
    return res


def test_reference_matches_independent_numpy() -> None:
    logits, labels = _inputs(4, 23, 6)
    ref = ensemble_metrics_reference(logits, labels, n_bins=10)
    want = _numpy_metrics(logits.double().numpy(), labels.numpy(), 10)
    for key, got in [
        ("nll", ref.nll),
        ("acc", ref.acc),
        ("conf", ref.conf),
        ("brier", ref.brier),
        ("ece", ref.ece),
        ("count", ref.bin_count),
        ("member_acc", ref.member_acc),
        ("member_nll", ref.member_nll),
    ]:
        np.testing.assert_allclose(got.numpy(), want[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_reference_is_stable_for_huge_logits() -> None:
    # Linear-space averaging underflows here; the reference must still give finite exact NLLs.
    logits, labels = _inputs(3, 9, 5, scale=1e4)
    ref = ensemble_metrics_reference(logits, labels)
    x, y = logits.double().numpy(), labels.numpy()
    lsm = x - logsumexp(x, axis=-1, keepdims=True)
    for m in range(1, 4):
        logp = logsumexp(lsm[:m], axis=0) - math.log(m)
        np.testing.assert_allclose(ref.nll[m - 1].item(), -logp[np.arange(9), y].mean(), rtol=1e-12)
    assert torch.isfinite(ref.nll).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 17, 7), (5, 33, 100), (2, 5, 130), (4, 6, 1)])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_fp32_matches_reference(impl: str, shape: tuple[int, int, int], scale: float) -> None:
    logits, labels = _inputs(*shape, scale=scale)
    _assert_close(ensemble_metrics(logits, labels, impl=impl), ensemble_metrics_reference(logits, labels))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_low_precision_inputs(impl: str, dtype: torch.dtype, scale: float) -> None:
    logits, labels = _inputs(3, 29, 11, scale=scale, dtype=dtype)
    # reference on the same rounded values, upcast to fp64
    _assert_close(ensemble_metrics(logits, labels, impl=impl), ensemble_metrics_reference(logits.double(), labels))


def test_torch_path_many_chunks_and_underflow(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny chunks: several chunks, each mixing ordinary samples and underflowing label probs.
    monkeypatch.setattr(em, "_CHUNK_ELEMS", 7 * 9)
    logits, labels = _inputs(5, 40, 7)
    logits[:, ::3] *= 3e3
    _assert_close(ensemble_metrics(logits, labels, impl="torch"), ensemble_metrics_reference(logits, labels))


def test_triton_many_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small tiles: several programs, the last one with padded rows, as on a GPU.
    monkeypatch.setattr(em, "_TILE_INTERPRET", 8 * 16)
    logits, labels = _inputs(3, 37, 13)
    logits[:, ::4] *= 1e4
    _assert_close(ensemble_metrics(logits, labels, impl="triton"), ensemble_metrics_reference(logits, labels))


@pytest.mark.parametrize("impl", ["reference", *IMPLS])
def test_bins_and_ece(impl: str) -> None:
    logits, labels = _inputs(4, 37, 9, scale=2.0)
    r = ensemble_metrics(logits, labels, n_bins=7, impl=impl)
    assert r.bin_count.shape == (4, 7) and r.n_bins == 7
    torch.testing.assert_close(r.bin_count.sum(1), torch.full((4,), 37.0, dtype=torch.float64))
    torch.testing.assert_close(r.bin_correct.sum(1) / 37, r.acc)
    torch.testing.assert_close(r.bin_conf_sum.sum(1) / 37, r.conf)
    want = _numpy_metrics(logits.double().numpy(), labels.numpy(), 7)
    np.testing.assert_allclose(r.ece.numpy(), want["ece"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.bin_count.numpy(), want["count"])


@pytest.mark.parametrize("impl", ["reference", *IMPLS])
def test_confidence_one_goes_to_last_bin(impl: str) -> None:
    logits = torch.zeros(2, 3, 4)
    logits[:, :, 1] = 200.0  # every member is certain of class 1: confidence exactly 1.0
    labels = torch.tensor([1, 1, 2])
    r = ensemble_metrics(logits, labels, n_bins=5, impl=impl)
    assert r.conf.tolist() == [1.0, 1.0]
    assert r.bin_count[:, -1].tolist() == [3.0, 3.0]
    assert r.bin_correct[:, -1].tolist() == [2.0, 2.0]


@pytest.mark.parametrize("impl", ["reference", *IMPLS])
def test_ties_take_the_first_class(impl: str) -> None:
    # Uniform predictions tie everywhere: argmax picks class 0, as torch.argmax does.
    # Two certain members that disagree tie at 0.5 for size 2.
    logits = torch.zeros(2, 6, 3)
    logits[0, 3:, 2] = 1e4
    logits[1, 3:, 1] = 1e4
    labels = torch.tensor([0, 1, 2, 1, 2, 0])
    r = ensemble_metrics(logits, labels, impl=impl)
    # size 1: samples 0..2 uniform (only label 0 right), 3..5 predict class 2 (sample 4 right)
    # size 2: samples 3..5 tie between classes 1 and 2 -> class 1 (sample 3 right)
    assert r.acc.tolist() == pytest.approx([2 / 6, 2 / 6])
    assert r.member_acc.tolist() == pytest.approx([2 / 6, 2 / 6])


@pytest.mark.parametrize("impl", IMPLS)
def test_prefix_property(impl: str) -> None:
    logits, labels = _inputs(5, 19, 13)
    full = ensemble_metrics(logits, labels, impl=impl)
    for m in (1, 3, 5):
        part = ensemble_metrics_reference(logits[:m], labels)
        for f in ["nll", "acc", "conf", "brier", "ece", "member_nll", "member_acc"]:
            torch.testing.assert_close(getattr(full, f)[:m], getattr(part, f), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(full.bin_count[:m], part.bin_count)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_logits(impl: str) -> None:
    base, _ = _inputs(3, 9, 12)
    logits = base.transpose(0, 1).contiguous().transpose(0, 1)[:, :, ::2]  # strided in all dims
    labels = torch.randint(0, 6, (9,))
    _assert_close(ensemble_metrics(logits, labels, impl=impl), ensemble_metrics_reference(logits, labels))


def test_merge_and_rows() -> None:
    logits, labels = _inputs(3, 30, 5)
    full = ensemble_metrics(logits, labels)
    halves = [ensemble_metrics(logits[:, s], labels[s]) for s in (slice(0, 11), slice(11, 30))]
    _assert_close(EnsembleMetrics.merge(halves), full, rtol=1e-6, atol=1e-7)
    rows = full.to_rows()
    assert [r["size"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"size", "acc", "nll", "ece", "brier", "conf"}
    assert rows[2]["ece"] == pytest.approx(full.ece[2].item())
    assert all(isinstance(v, (int, float)) for r in rows for v in r.values())


@pytest.mark.parametrize("impl", ["reference", *IMPLS])
def test_bad_inputs_raise_clear_errors(impl: str) -> None:
    logits, labels = _inputs(3, 8, 5)

    def check(x: torch.Tensor, y: torch.Tensor, *needles: str) -> None:
        with pytest.raises(ValueError) as info:
            ensemble_metrics(x, y, impl=impl)
        msg = str(info.value)
        assert "\n" not in msg
        for n in needles:
            assert n in msg, msg

    check(logits, labels[:7], "N", "[8]", "(7,)")
    check(logits[0], labels, "[M, N, C]")
    bad = labels.clone()
    bad[5] = 5
    check(logits, bad, "sample 5", "[0, 5)")
    bad[5], bad[2] = 1, -1
    check(logits, bad, "sample 2")
    for value in (float("nan"), float("inf"), float("-inf")):
        x = logits.clone()
        x[2, 6, 1] = value
        x[2, 7, 0] = value
        check(x, labels, "member 2", "sample 6")


def test_unknown_impl_and_default_dispatch() -> None:
    logits, labels = _inputs(2, 4, 3)
    with pytest.raises(ValueError, match="impl"):
        ensemble_metrics(logits, labels, impl="cuda")
    _assert_close(ensemble_metrics(logits, labels), ensemble_metrics_reference(logits, labels))
