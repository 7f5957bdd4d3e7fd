"""Hessian results in the store: spectra at snapshots (kind "hessians") and along lines.

The computation is landscape.evaluate.hessian's; this module owns the result's life: the config a
stored result must match (the evaluator's, precision included, and every spectrum setting), resume
or refusal through `Store.resume_or_refuse`, and the one write.

For a model with attention modules the config also holds `sdpa_backend: "math"`, the backend of
scaled dot-product attention its Hessian-vector products ran on (the fused kernels have no double
backward). Only then: the products of other models are the same with or without it, and their
results stored before the key existed still resume.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from landscape.core import distributed
from landscape.core.checkpoints import Snapshot, check_same_architecture
from landscape.evaluate.engine import Evaluator
from landscape.evaluate.hessian import (
    SDPA_BACKEND,
    check_spectrum_args,
    hessian_directions,
    hessian_spectrum,
    holds_attention,
    stack_points,
)
from landscape.geometry.lines import line_snapshot
from landscape.store.store import Store

KIND = "hessians"


def attention_config(evaluator: Evaluator) -> dict[str, Any]:
    """{"sdpa_backend": "math"} for a model with attention modules, {} for any other (whose stored
    results, from before the key existed, must still resume)."""
    return {"sdpa_backend": SDPA_BACKEND} if holds_attention(evaluator.model) else {}


def _spectrum_config(evaluator: Evaluator, top_k, trace, density, probes, iters, tol, density_runs, density_points,
                     sigma, seed, dtype, probe_batch) -> dict[str, Any]:
    d = evaluator.loss_data()
    # probe_batch only when set, so results stored before it existed still resume
    batch = {} if probe_batch is None else {"probe_batch": int(probe_batch)}
    return {**evaluator.config, **attention_config(evaluator), **batch, "split": d["split"], "samples": d["samples"],
            "top_k": int(top_k),
            "trace": bool(trace), "density": bool(density), "probes": int(probes) if trace else None,
            "iters": int(iters), "tol": float(tol), "density_runs": int(density_runs) if density else None,
            "density_points": int(density_points) if density else None, "sigma": float(sigma) if density else None,
            "seed": int(seed), "dtype": None if dtype is None else str(dtype)}


_SCALARS = ("loss", "grad_norm", "trace", "trace_stderr", "iterations", "converged", "hvps", "seconds",
            "density_sigma", "parameters", "diverged", "cached_batches", "batches")
_ARRAYS = ("eigenvalues", "eigenvectors", "residuals", "trace_samples", "density_grid", "density", "slq_nodes",
           "slq_weights")


def _finished(store: Store | None, name: str, config: Mapping[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The stored result `name` when it was computed with `config`; None when it must be computed."""
    if store is None or not store.resume_or_refuse(KIND, name, config, overwrite):
        return None
    attrs, obj = store.read_attrs(KIND, name), store.read(KIND, name)
    return {"trace": None, "trace_stderr": None, **{k: attrs[k] for k in _SCALARS if k in attrs},
            **{k: np.asarray(v) for k, v in obj.arrays.items()}}


def hessian(evaluator: Evaluator, snapshot: Snapshot, *, top_k: int = 1, trace: bool = False, density: bool = False,
            probes: int = 100, iters: int = 100, tol: float = 1e-4, density_runs: int = 1,
            density_points: int = 1000, sigma: float = 0.01, seed: int = 0, dtype: str | None = None,
            probe_batch: int | None = None, keep_eigenvectors: bool = True, store: Store | None = None,
            name: str = "hessian", provenance: Mapping[str, Any] | None = None, overwrite: bool = False,
            quiet: bool = True) -> dict[str, Any]:
    """The Hessian spectrum at `snapshot` on the evaluator's data (training split if present), loss,
    batch size and device, stored as object `name` of kind "hessians".

    BN: eval mode with the snapshot's buffers (evaluator BN mode keep), or with statistics
    recomputed at the point (mode recompute). The products run at the evaluator's precision;
    `probe_batch` vectors go through each batched product (`--chunk`; None: the operator's choice).
    A finished result with the same arguments is returned
    without computing or writing; other arguments on an existing name are refused unless `overwrite`.
    """
    check_spectrum_args(top_k, probes, iters, tol, density_runs, density_points, sigma)
    prov = dict(provenance or {})
    config = {**prov, **_spectrum_config(evaluator, top_k, trace, density, probes, iters, tol, density_runs,
                                         density_points, sigma, seed, dtype, probe_batch),
              "snapshot": snapshot.fingerprint(), "keep_eigenvectors": bool(keep_eigenvectors)}
    head = {"kind": "hessian", "name": name, "snapshot": snapshot.name, "bn_mode": evaluator.bn_mode}
    done = _finished(store, name, config, overwrite)
    if done is not None:
        return {**head, **done, "computed_now": 0}
    if store is not None:
        store.lock()  # the one writer before any work (as grids do): a second writer is refused now
    d = evaluator.loss_data()
    split = d["split"]
    # the products at the evaluator's precision, which the result is stored with
    res = hessian_spectrum(evaluator.model, evaluator.with_point_buffers(snapshot), d["x"], d["y"],
                           stream=d["stream"], top_k=top_k, trace=trace, density=density, probes=probes,
                           iters=iters, tol=tol, density_runs=density_runs, density_points=density_points,
                           sigma=sigma, seed=seed, batch_size=evaluator.batch_size, device=evaluator.device,
                           loss_fn=evaluator.loss_fn, dtype=dtype, probe_batch=probe_batch, quiet=quiet,
                           scope=evaluator.precision_scope)
    if not keep_eigenvectors:
        res.pop("eigenvectors")
    if store is not None:
        arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in res.items()
                  if k in _ARRAYS}
        attrs = {**prov, "bn_mode": evaluator.bn_mode, "split": split, "snapshot": snapshot.name,
                 "config": config, **{k: res[k] for k in _SCALARS if k in res and res[k] is not None}}
        store.write(KIND, name, arrays, attrs, overwrite=overwrite or store.has(KIND, name))
    return {**head, **res, "computed_now": 1}


def hessian_line(evaluator: Evaluator, a: Snapshot, b: Snapshot, alphas: np.ndarray, *, store: Store | None = None,
                 name: str = "hessian-line",
                 provenance: Mapping[str, Any] | None = None, overwrite: bool = False, quiet: bool = True,
                 top_k: int = 1, trace: bool = False, density: bool = False, probes: int = 100, iters: int = 100,
                 tol: float = 1e-4, density_runs: int = 1, density_points: int = 1000, sigma: float = 0.01,
                 seed: int = 0, dtype: str | None = None, probe_batch: int | None = None) -> dict[str, Any]:
    """`hessian` at each point (1−α)·a + α·b (buffers interpolated; BN per the evaluator's mode).

    Each point is its own stored object `NAME-i` (without eigenvectors), so a rerun after a crash
    computes only the missing points; the line's summary (alphas, eigenvalues [n, k], trace,
    trace_stderr, loss, grad_norm, densities on a common grid) is the object `NAME`."""
    check_same_architecture([a, b])
    check_spectrum_args(top_k, probes, iters, tol, density_runs, density_points, sigma)
    alphas = np.asarray(alphas, dtype=np.float64)
    prov = dict(provenance or {})
    settings = dict(top_k=top_k, trace=trace, density=density, probes=probes, iters=iters, tol=tol,
                    density_runs=density_runs, density_points=density_points, sigma=sigma, seed=seed, dtype=dtype,
                    probe_batch=probe_batch)
    config = {**prov, **_spectrum_config(evaluator, top_k, trace, density, probes, iters, tol, density_runs,
                                         density_points, sigma, seed, dtype, probe_batch),
              "a": a.fingerprint(), "b": b.fingerprint(), "alphas": alphas.tolist()}
    head = {"kind": "hessian_line", "name": name, "a": a.name, "b": b.name, "bn_mode": evaluator.bn_mode}
    done = _finished(store, name, config, overwrite)
    if done is not None:
        return {**head, **done, "computed_now": 0}
    if store is not None:
        store.lock()
    points, computed = [], 0
    for i, al in enumerate(tqdm(alphas, desc="line", disable=quiet, leave=False)):
        res = hessian(evaluator, line_snapshot(a, b, float(al)), store=store, name=f"{name}-{i}", provenance=prov,
                      overwrite=overwrite, quiet=quiet, keep_eigenvectors=False, **settings)
        computed += res["computed_now"]
        points.append(res)
    out = stack_points(alphas, points, density_points, sigma)
    out.pop("points")
    if store is not None:
        arrays = {k: np.asarray(v) for k, v in out.items() if v is not None}
        attrs = {**prov, "bn_mode": evaluator.bn_mode, "a": a.name, "b": b.name, "config": config,
                 "points": [f"{name}-{i}" for i in range(len(alphas))],
                 **({"density_sigma": out["density_sigma"]} if "density_sigma" in out else {})}
        arrays.pop("density_sigma", None)
        store.write(KIND, name, arrays, attrs, overwrite=overwrite or store.has(KIND, name))
    return {**head, **out, "computed_now": computed}


def plane_directions(evaluator: Evaluator, center: Snapshot, *, store: Store | None = None, name: str = "plane",
                     normalization: str = "filter", ignore_bias_bn: bool = True, iters: int = 100,
                     tol: float = 1e-4, seed: int = 0, overwrite: bool = False, quiet: bool = True
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The top two Hessian eigenvectors at `center` as plane directions, computed once, on rank 0,
    and stored as the directions `NAME-hessian` with the config they were computed with: a rerun
    finds them there instead of running Lanczos again (whose eigenvectors could differ in sign, or
    by device, and so refuse the resume). Where the surface `name` already exists and `overwrite`
    is not given, nothing is written (the plane may still be refused, changing nothing)."""
    key = f"{name}-hessian"
    config = {**evaluator.config, **attention_config(evaluator), "center": center.fingerprint(),
              "normalization": normalization,
              "ignore_bias_bn": bool(ignore_bias_bn), "iters": int(iters), "tol": float(tol), "seed": int(seed)}

    def on_rank0() -> tuple[torch.Tensor, dict[str, Any]]:
        if store is not None and store.resume_or_refuse("directions", key, config, overwrite):
            directions, attrs = store.read_directions(key)
            return directions, {k: v for k, v in attrs.items() if k in _DIRECTION_ATTRS}
        directions, attrs = hessian_directions(evaluator, center, normalization=normalization,
                                               ignore_bias_bn=ignore_bias_bn, iters=iters, tol=tol, seed=seed,
                                               quiet=quiet)
        if store is not None and (overwrite or not store.has("surfaces", name)):
            store.lock()
            store.write_directions(key, directions, {**attrs, "config": config},
                                   overwrite=store.has("directions", key))
        return directions, attrs
    return distributed.on_rank0(on_rank0)


# the attributes hessian_directions gives a plane (and the stored directions give back)
_DIRECTION_ATTRS = ("kind", "normalization", "ignore_bias_bn", "eigenvalues", "seed", "iters", "tol", "converged",
                    "split")
