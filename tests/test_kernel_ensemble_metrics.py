"""Fused ensemble metrics: reference vs numpy, torch CPU path and Triton (interpreter) vs reference.

Every quantity (NLL, accuracy, confidence, Brier, bins, member metrics, pairwise disagreement,
KL of the members from the ensemble, temperature-scaled NLL) for every size and every member
order is checked against an fp64 reference, and the reference against an independent numpy
computation. The Triton kernel runs with the GPU's own tiles on shapes that span several
programs on both grid axes (blocks of samples, member orders) and several member iterations.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, logsumexp, softmax

from landscape_kernels.ensemble import (
    EnsembleMetrics,
    ensemble_metrics,
    ensemble_metrics_orders,
    ensemble_metrics_reference,
)

# The package exports the function under the module's name, so fetch the module itself.
em = importlib.import_module("landscape_kernels.ensemble")

IMPLS = ["torch", "triton"]
FLOAT_FIELDS = ["nll", "conf", "brier", "ece", "bin_conf_sum", "member_nll", "kl", "cal_nll"]
EXACT_FIELDS = ["acc", "bin_count", "bin_correct", "member_acc", "pair_disagree"]


def _inputs(M: int, N: int, C: int, scale: float = 3.0, dtype: torch.dtype = torch.float32):
    logits = (torch.randn(M, N, C, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, C, (N,))
    return logits, labels


def _orders(M: int, P: int) -> torch.Tensor:
    """The identity, the reverse, then random permutations: P rows."""
    rows = [torch.arange(M), torch.arange(M).flip(0)] + [torch.randperm(M) for _ in range(P)]
    return torch.stack(rows[:P])


def _temps(P: int, M: int) -> torch.Tensor:
    return torch.exp(torch.empty(P, M, dtype=torch.float64).uniform_(-1.5, 1.5))


def _assert_close(got: EnsembleMetrics, want: EnsembleMetrics, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert got.n_samples == want.n_samples
    assert (got.cal_nll is None) == (want.cal_nll is None)
    for f in FLOAT_FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        if b is None:
            continue
        assert a.dtype == torch.float64 and a.device.type == "cpu", f
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, f=f: f"{f}: {m}")
    for f in EXACT_FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=lambda m, f=f: f"{f}: {m}")


def _check_orders(logits, labels, orders, temps, impl, rtol=1e-5, atol=1e-6, n_bins=15) -> list[EnsembleMetrics]:
    got = ensemble_metrics_orders(logits, labels, orders, n_bins, temperatures=temps, impl=impl)
    assert len(got) == orders.shape[0]
    for k in range(orders.shape[0]):
        want = ensemble_metrics_reference(logits, labels, n_bins, order=orders[k],
                                          temperatures=None if temps is None else temps[k])
        _assert_close(got[k], want, rtol, atol)
    return got


def _numpy_metrics(x: np.ndarray, y: np.ndarray, n_bins: int, temps: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Independent fp64 check: average softmax probabilities directly in linear space; KL,
    disagreement and the scaled NLL from their definitions."""
    M, N, C = x.shape
    probs = softmax(x, axis=-1)
    member_logp = x - logsumexp(x, axis=-1, keepdims=True)
    preds = x.argmax(-1)
    out: dict[str, list] = {k: [] for k in ("nll", "acc", "conf", "brier", "ece", "count", "kl", "dis", "cal")}
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
        out["kl"].append(np.mean([(probs[i] * (member_logp[i] - np.log(p))).sum(-1).mean() for i in range(m)]))
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        out["dis"].append(np.mean([(preds[i] != preds[j]).mean() for i, j in pairs]) if pairs else 0.0)
        if temps is not None:
            out["cal"].append(-log_softmax(np.log(p) / temps[m - 1], axis=-1)[np.arange(N), y].mean())
    res = {k: np.array(v, dtype=np.float64) for k, v in out.items()}
    res["member_acc"] = (preds == y).mean(1)
    res["member_nll"] = -member_logp[:, np.arange(N), y].mean(1)
    return res


# --------------------------------------------------------------------------------------------
# the reference


def test_reference_matches_independent_numpy() -> None:
    logits, labels = _inputs(4, 23, 6)
    order = torch.tensor([2, 0, 3, 1])
    temps = torch.tensor([0.7, 1.3, 2.0, 0.4], dtype=torch.float64)
    ref = ensemble_metrics_reference(logits, labels, n_bins=10, order=order, temperatures=temps)
    want = _numpy_metrics(logits.double().numpy()[order.numpy()], labels.numpy(), 10, temps.numpy())
    for key, got in [
        ("nll", ref.nll),
        ("acc", ref.acc),
        ("conf", ref.conf),
        ("brier", ref.brier),
        ("ece", ref.ece),
        ("count", ref.bin_count),
        ("member_acc", ref.member_acc),
        ("member_nll", ref.member_nll),
        ("kl", ref.kl),
        ("dis", ref.disagreement),
        ("cal", ref.cal_nll),
    ]:
        np.testing.assert_allclose(got.numpy(), want[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_reference_is_stable_for_huge_logits() -> None:
    # Linear-space averaging underflows here; the reference must still give finite exact NLLs.
    logits, labels = _inputs(3, 9, 5, scale=1e4)
    temps = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    ref = ensemble_metrics_reference(logits, labels, temperatures=temps)
    x, y = logits.double().numpy(), labels.numpy()
    lsm = x - logsumexp(x, axis=-1, keepdims=True)
    for m in range(1, 4):
        logp = logsumexp(lsm[:m], axis=0) - math.log(m)
        np.testing.assert_allclose(ref.nll[m - 1].item(), -logp[np.arange(9), y].mean(), rtol=1e-12)
        cal = -log_softmax(logp / temps[m - 1].item(), axis=-1)[np.arange(9), y].mean()
        np.testing.assert_allclose(ref.cal_nll[m - 1].item(), cal, rtol=1e-12)
    assert torch.isfinite(ref.nll).all() and torch.isfinite(ref.kl).all() and torch.isfinite(ref.cal_nll).all()


# --------------------------------------------------------------------------------------------
# torch path and Triton kernel against the reference, every order


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 17, 7), (5, 33, 100), (2, 5, 130), (4, 6, 1), (3, 70, 13)])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_fp32_matches_reference(impl: str, shape: tuple[int, int, int], scale: float) -> None:
    logits, labels = _inputs(*shape, scale=scale)
    M = shape[0]
    P = min(3, math.factorial(M))
    orders = _orders(M, P)
    _check_orders(logits, labels, orders, _temps(P, M), impl)
    _assert_close(ensemble_metrics(logits, labels, impl=impl), ensemble_metrics_reference(logits, labels))


@pytest.mark.parametrize("impl", IMPLS)
def test_orders_are_permuted_inputs(impl: str) -> None:
    # Result k of one call equals the op on the members permuted by orders[k]: nothing is shared
    # between orders that should not be.
    logits, labels = _inputs(5, 41, 9)
    orders = _orders(5, 4)
    temps = _temps(4, 5)
    got = ensemble_metrics_orders(logits, labels, orders, temperatures=temps, impl=impl)
    for k in range(4):
        alone = ensemble_metrics(logits[orders[k]], labels, temperatures=temps[k], impl=impl)
        _assert_close(got[k], alone, rtol=1e-6, atol=1e-7)
    # the full ensemble is the same set of members in every order
    for k in range(1, 4):
        for f in ("nll", "conf", "brier", "kl", "acc"):
            torch.testing.assert_close(getattr(got[k], f)[-1], getattr(got[0], f)[-1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_new_quantities_against_numpy(impl: str) -> None:
    # disagreement, KL and the scaled NLL against their definitions, computed independently
    logits, labels = _inputs(4, 29, 11, scale=2.0)
    orders = _orders(4, 3)
    temps = _temps(3, 4)
    got = ensemble_metrics_orders(logits, labels, orders, temperatures=temps, impl=impl)
    for k in range(3):
        want = _numpy_metrics(logits.double().numpy()[orders[k].numpy()], labels.numpy(), 15, temps[k].numpy())
        np.testing.assert_allclose(got[k].disagreement.numpy(), want["dis"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got[k].kl.numpy(), want["kl"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[k].cal_nll.numpy(), want["cal"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[k].member_acc.numpy(), want["member_acc"], rtol=0, atol=1e-12)
    assert got[0].kl[0] == 0.0 and got[0].disagreement[0] == 0.0
    assert (got[0].kl[1:] > 0).all() and (got[0].disagreement[1:] > 0).all()


def test_kernel_in_gpu_launch_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    # The interpreter runs the GPU's own tiles (no interpreter-only block sizes): here 3-4
    # programs over the samples (the last one padded), 4 orders on the second grid axis and 6
    # member iterations, with temperatures. A kernel that ignores either program id, or
    # overwrites a running sum instead of adding to it, fails this test.
    launches = []
    kernel = em._ensemble_metrics_kernel

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((grid, kwargs))
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(em, "_ensemble_metrics_kernel", Recorder())
    for (M, N, C) in [(6, 70, 13), (6, 11, 100)]:
        logits, labels = _inputs(M, N, C)
        logits[:, ::5] *= 1e3  # some samples with underflowing label probabilities
        orders = _orders(M, 4)
        # saturated members make confidences j/m: 7 bins keep them off the bin edges
        _check_orders(logits, labels, orders, _temps(4, M), "triton", n_bins=7)
        grid, kw = launches[-1]
        assert grid[0] >= 3 and grid[1] == 4, grid
        assert grid[0] * kw["BLOCK_N"] > N > (grid[0] - 1) * kw["BLOCK_N"]  # last program padded
        assert kw["BLOCK_N"] * kw["BLOCK_C"] <= em._TILE_GPU  # the GPU's tile, not a bigger one
        assert (kw["BLOCK_N"], kw["BLOCK_C"], kw["num_warps"]) == em._triton_blocks(N, C)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_low_precision_inputs(impl: str, dtype: torch.dtype, scale: float) -> None:
    logits, labels = _inputs(3, 29, 11, scale=scale, dtype=dtype)
    # reference on the same rounded values, upcast to fp64
    orders = _orders(3, 2)
    temps = _temps(2, 3)
    got = ensemble_metrics_orders(logits, labels, orders, temperatures=temps, impl=impl)
    for k in range(2):
        want = ensemble_metrics_reference(logits.double(), labels, order=orders[k], temperatures=temps[k])
        _assert_close(got[k], want)


def test_torch_path_many_chunks_and_underflow(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny chunks: several chunks, each mixing ordinary samples and underflowing label probs.
    monkeypatch.setattr(em, "_CHUNK_ELEMS", 7 * 9 * 3)
    logits, labels = _inputs(5, 40, 7)
    logits[:, ::3] *= 3e3
    orders = _orders(5, 3)
    _check_orders(logits, labels, orders, _temps(3, 5), "torch", n_bins=7)
    _check_orders(logits, labels, orders, None, "torch", n_bins=7)


@pytest.mark.parametrize("impl", IMPLS)
def test_extreme_temperatures(impl: str) -> None:
    # the bounds of the temperature search, on ordinary and on saturated logits
    for scale in (3.0, 300.0):
        logits, labels = _inputs(3, 37, 10, scale=scale)
        temps = torch.tensor([[math.exp(-4)] * 3, [math.exp(4)] * 3, [math.exp(-4), 1.0, math.exp(4)]],
                             dtype=torch.float64)
        _check_orders(logits, labels, _orders(3, 3), temps, impl)


def test_fp64_stays_fp64(monkeypatch: pytest.MonkeyPatch) -> None:
    # fp64 logits are computed in fp64 (agreement far beyond fp32), whatever asks for Triton
    logits, labels = _inputs(3, 23, 9, dtype=torch.float64)
    orders, temps = _orders(3, 2), _temps(2, 3)
    _check_orders(logits, labels, orders, temps, "torch", rtol=1e-11, atol=1e-12)
    monkeypatch.setenv("KERNELS_IMPL", "triton")  # every op through its kernel, fp64 excepted
    _check_orders(logits, labels, orders, temps, None, rtol=1e-11, atol=1e-12)
    with pytest.raises(TypeError, match="float64"):
        ensemble_metrics(logits, labels, impl="triton")
    # ... while fp32 goes through the kernel (interpreted): fp32 accuracy only
    x32 = logits.float()
    got = ensemble_metrics(x32, labels)
    want = ensemble_metrics_reference(x32, labels)
    _assert_close(got, want)
    assert not torch.equal(got.nll, want.nll)


# --------------------------------------------------------------------------------------------
# properties


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
    assert r.kl.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert r.disagreement.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("impl", ["reference", *IMPLS])
def test_ties_take_the_first_class(impl: str) -> None:
    # Uniform predictions tie everywhere: argmax picks class 0, as torch.argmax does.
    # Two certain members that disagree tie at 0.5 for size 2.
    logits = torch.zeros(2, 6, 3)
    logits[0, 3:, 2] = 1e4
    logits[1, 3:, 1] = 1e4
    labels = torch.tensor([0, 1, 2, 1, 2, 0])
    orders = torch.tensor([[0, 1], [1, 0]])
    r = ensemble_metrics_orders(logits, labels, orders, impl=impl)
    # size 1: samples 0..2 uniform (only label 0 right), 3..5 predict class 2 (sample 4 right)
    # size 2: samples 3..5 tie between classes 1 and 2 -> class 1 (sample 3 right)
    assert r[0].acc.tolist() == pytest.approx([2 / 6, 2 / 6])
    assert r[0].member_acc.tolist() == pytest.approx([2 / 6, 2 / 6])
    # the other order: member 1 alone predicts class 1 on 3..5 (sample 3 right)
    assert r[1].acc.tolist() == pytest.approx([2 / 6, 2 / 6])
    assert r[0].pair_disagree.tolist() == [[0.0, 3.0], [3.0, 0.0]]
    assert r[0].disagreement.tolist() == pytest.approx([0.0, 0.5])


@pytest.mark.parametrize("impl", IMPLS)
def test_prefix_property(impl: str) -> None:
    logits, labels = _inputs(5, 19, 13)
    full = ensemble_metrics(logits, labels, impl=impl)
    for m in (1, 3, 5):
        part = ensemble_metrics_reference(logits[:m], labels)
        for f in ["nll", "acc", "conf", "brier", "ece", "member_nll", "member_acc", "kl", "disagreement"]:
            torch.testing.assert_close(getattr(full, f)[:m], getattr(part, f), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(full.bin_count[:m], part.bin_count)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_logits(impl: str) -> None:
    base, _ = _inputs(3, 9, 12)
    logits = base.transpose(0, 1).contiguous().transpose(0, 1)[:, :, ::2]  # strided in all dims
    labels = torch.randint(0, 6, (9,))
    _check_orders(logits, labels, _orders(3, 2), _temps(2, 3), impl)


def test_merge_and_rows() -> None:
    logits, labels = _inputs(3, 30, 5)
    temps = torch.tensor([0.8, 1.1, 1.5], dtype=torch.float64)
    full = ensemble_metrics(logits, labels, temperatures=temps)
    halves = [ensemble_metrics(logits[:, s], labels[s], temperatures=temps) for s in (slice(0, 11), slice(11, 30))]
    _assert_close(EnsembleMetrics.merge(halves), full, rtol=1e-6, atol=1e-7)
    rows = full.to_rows()
    assert [r["size"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"size", "acc", "nll", "ece", "brier", "conf", "disagreement", "kl", "cal_nll"}
    assert rows[2]["ece"] == pytest.approx(full.ece[2].item())
    assert rows[2]["disagreement"] == pytest.approx(full.disagreement[2].item())
    assert all(isinstance(v, (int, float)) for r in rows for v in r.values())
    assert "cal_nll" not in ensemble_metrics(logits, labels).to_rows()[0]
    with pytest.raises(ValueError, match="cal_nll"):
        EnsembleMetrics.merge([halves[0], ensemble_metrics(logits[:, 11:], labels[11:])])


@pytest.mark.parametrize("impl", ["reference", *IMPLS])
def test_bad_inputs_raise_clear_errors(impl: str) -> None:
    logits, labels = _inputs(3, 8, 5)

    def check(x: torch.Tensor, y: torch.Tensor, *needles: str, **kw) -> None:
        with pytest.raises(ValueError) as info:
            ensemble_metrics_orders(x, y, impl=impl, **kw)
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
        check(x, labels, "member 2", "sample 6", orders=torch.tensor([[2, 0, 1]]))  # by member, not position
    check(logits, labels, "permutation", orders=torch.tensor([[0, 1, 1]]))
    check(logits, labels, "[P, M]", orders=torch.tensor([[0, 1]]))
    check(logits, labels, "positive", temperatures=torch.tensor([1.0, 0.0, 1.0]))
    check(logits, labels, "positive", temperatures=torch.tensor([1.0, float("nan"), 1.0]))
    check(logits, labels, "temperatures", temperatures=torch.ones(2))


def test_unknown_impl_and_default_dispatch() -> None:
    logits, labels = _inputs(2, 4, 3)
    with pytest.raises(ValueError, match="impl"):
        ensemble_metrics(logits, labels, impl="cuda")
    _assert_close(ensemble_metrics(logits, labels), ensemble_metrics_reference(logits, labels))
    _assert_close(ensemble_metrics(logits, labels, impl="auto"), ensemble_metrics_reference(logits, labels))
