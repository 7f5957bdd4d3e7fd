"""`landscape hessian` and `landscape connect`: the Python functions and their subcommands.

`register(subparsers)` adds both subcommands to the `landscape` parser (the CLI calls it, or the
`landscape.commands` entry-point group does). `hessian` and `connect` are the functions behind
them, shaped like those of landscape.api: arguments checked before anything is loaded, a setup
(model, data, evaluator), the analysis layer (landscape.hessian.hessian / hessian_line,
landscape.curves.connect) computing and storing, and a JSON-able dict back.
`hessian_directions` (re-exported from landscape.hessian) gives the plane of the top two
eigenvectors for `landscape plane --hessian-directions`.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from torch import nn

from . import api
from landscape.analyses.grids import to_json
from landscape.core.checkpoints import Snapshot, check_same_architecture
from .cli import add_common, command
from landscape.geometry.curves import CURVES, OPTIMIZERS, check_training_args
from landscape.geometry.curves import connect as connect_analysis
from landscape.evaluate.engine import LossFn
from landscape.core.errors import LandscapeError
from landscape.store.grid import line_alphas
from landscape.evaluate.hessian import check_spectrum_args, hessian_directions, hessian_line  # noqa: F401 - re-exported
from landscape.evaluate.hessian import hessian as hessian_analysis
from landscape.core.jsonable import to_jsonable
from landscape.store.refs import load_snapshot
from landscape.core.validate import positive_int

__all__ = ["register", "hessian", "connect", "hessian_directions"]


def _snapshots(refs: Sequence[str | Snapshot], model: nn.Module) -> list[Snapshot]:
    snaps = [r if isinstance(r, Snapshot) else load_snapshot(r, model) for r in refs]
    check_same_architecture(snaps)
    return snaps


_POINT_KEYS = ("name", "snapshot", "eigenvalues", "residuals", "iterations", "converged", "trace", "trace_stderr",
               "loss", "grad_norm", "parameters", "hvps", "seconds", "diverged", "computed_now")


def _point_json(res: dict[str, Any], density: bool) -> dict[str, Any]:
    out = {k: res.get(k) for k in _POINT_KEYS}
    if density and "density" in res:
        out["density"] = {"grid": res["density_grid"], "values": res["density"], "sigma": res.get("density_sigma")}
    return to_jsonable(out)


def hessian(snapshots: Sequence[str | Snapshot] = (), *, model: str | nn.Module, data=None, test_data=None,
            along: Sequence[str | Snapshot] | None = None, num: int = 5, top_k: int = 1, trace: bool = False,
            density: bool = False, probes: int = 100, iters: int = 100, tol: float = 1e-4, density_runs: int = 1,
            seed: int = 0, dtype: str | None = None, bn: str = "auto", out: str | None = None,
            name: str = "hessian", overwrite: bool = False, device: str = "auto", num_classes: int | None = None,
            batch_size: int = 250, bn_samples: int = 2000, quiet: bool = True,
            loss_fn: LossFn | str | None = None) -> dict[str, Any]:
    """Hessian spectra (top-k eigenvalues, with `trace` the Hutchinson trace and its standard error,
    with `density` the SLQ spectral density) of the mean loss over the data (`data`, else
    `test_data`) at each snapshot, or with `along=(A, B)` at `num` points of the line from A to B.

    Stored (with `out`) as kind "hessians": one snapshot under `name`, several under NAME-0,
    NAME-1, ...; a line under `name` (its points under NAME-0, ...). JSON: eigenvalues
    (descending), trace, trace_stderr (null without `trace`), per snapshot or per point."""
    check_spectrum_args(top_k, probes, iters, tol, density_runs)
    snapshots = list(snapshots or [])
    if along is not None and len(along) != 2:
        raise LandscapeError("--along needs exactly two snapshots A B")
    if along is None and not snapshots:
        raise LandscapeError("give one or more snapshots, or --along A B")
    if along is not None and snapshots:
        raise LandscapeError("give snapshots or --along A B, not both")
    alphas = line_alphas(positive_int(num, "--num")) if along is not None else None
    settings = dict(top_k=top_k, trace=trace, density=density, probes=probes, iters=iters, tol=tol,
                    density_runs=density_runs, seed=seed, dtype=dtype)
    with api.open_store(out) as store:
        s = api.setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
                      bn_samples=bn_samples, loss_fn=loss_fn, snapshots=list(along or snapshots))
        if along is not None:
            a, b = _snapshots(list(along), s.model)
            res = hessian_line(s.evaluator, a, b, alphas, store=store, name=name, provenance=s.provenance(),
                               overwrite=overwrite, quiet=quiet, **settings)
            body = {k: res.get(k) for k in ("kind", "name", "a", "b", "bn_mode", "alphas", "eigenvalues", "trace",
                                             "trace_stderr", "loss", "grad_norm", "converged", "computed_now")}
            if density:
                body["density"] = {"grid": res["density_grid"], "values": res["density"],
                                   "sigma": res.get("density_sigma")}
            return to_jsonable({**body, "store": out})
        snaps = _snapshots(snapshots, s.model)
        names = [name] if len(snaps) == 1 else [f"{name}-{i}" for i in range(len(snaps))]
        results = [hessian_analysis(s.evaluator, sn, store=store, name=nm, provenance=s.provenance(),
                                    overwrite=overwrite, quiet=quiet, **settings)
                   for sn, nm in zip(snaps, names)]
    points = [_point_json(r, density) for r in results]
    if len(points) == 1:
        return {"kind": "hessian", "bn_mode": s.evaluator.bn_mode, **points[0], "store": out}
    return {"kind": "hessians", "bn_mode": s.evaluator.bn_mode, "snapshots": [p["snapshot"] for p in points],
            "eigenvalues": [p["eigenvalues"] for p in points], "trace": [p["trace"] for p in points],
            "trace_stderr": [p["trace_stderr"] for p in points], "results": points, "store": out}


def connect(a: str | Snapshot, b: str | Snapshot, *, model: str | nn.Module, data=None, test_data=None,
            curve: str = "bezier", epochs: int = 20, lr: float = 0.05, momentum: float = 0.9,
            weight_decay: float = 0.0, optimizer: str = "sgd", train_batch_size: int = 128, num: int = 21,
            seed: int = 0, bn: str = "auto", out: str | None = None, name: str = "connect",
            overwrite: bool = False, device: str = "auto", num_classes: int | None = None, batch_size: int = 250,
            bn_samples: int = 2000, quiet: bool = True, loss_fn: LossFn | str | None = None,
            chunk: int | None = None) -> dict[str, Any]:
    """Train a Bezier or polygonal-chain curve from A to B (Garipov et al.) and evaluate it and the
    straight line at `num` values of t with BN recomputed at each point; JSON with both barriers
    (`barriers` along the curve, `line_barriers` along the line) and both metric curves."""
    check_training_args(curve, epochs, lr, momentum, weight_decay, optimizer, train_batch_size)
    alphas = line_alphas(positive_int(num, "--num"))
    if data is None:
        raise LandscapeError("connect trains the curve on training data: give --data")
    with api.open_store(out) as store:
        s = api.setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
                      bn_samples=bn_samples, loss_fn=loss_fn, snapshots=[a, b])
        sa, sb = _snapshots([a, b], s.model)
        res = connect_analysis(s.evaluator, sa, sb, curve=curve, alphas=alphas, epochs=epochs, lr=lr,
                               momentum=momentum, weight_decay=weight_decay, optimizer=optimizer,
                               train_batch_size=train_batch_size, seed=seed, store=store, name=name,
                               provenance=s.provenance(), overwrite=overwrite, chunk=chunk, quiet=quiet)
    res.pop("control_point", None)
    bend = f"{out}:{res['bend']}" if out is not None and res.get("bend") else None
    return to_json({**res, "bend": bend, "store": out})


# -- the subcommands ------------------------------------------------------------------------
def _fmt(v: Any, fmt: str = ".4g") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(model=args.model, data=args.data, test_data=args.test_data, bn=args.bn, out=args.out,
                overwrite=args.overwrite, device=args.device, num_classes=args.num_classes,
                batch_size=args.batch_size, bn_samples=args.bn_samples, quiet=args.quiet,
                loss_fn=getattr(args, "loss", None))


def cmd_hessian(args: argparse.Namespace) -> tuple[dict, str]:
    res = hessian(args.snapshots, along=args.along, num=args.num, top_k=args.top_k, trace=args.trace,
                  density=args.density, probes=args.probes, iters=args.iters, tol=args.tol,
                  density_runs=args.density_runs, seed=args.seed, name=args.name or "hessian", **_eval_kwargs(args))
    lines = []
    if res["kind"] == "hessian_line":
        lines.append(f"Hessian along {res['a']} -> {res['b']} ({len(res['alphas'])} points, BN {res['bn_mode']})")
        for i, al in enumerate(res["alphas"]):
            tr = "" if res["trace"] is None else f"  trace {_fmt(res['trace'][i])} ± {_fmt(res['trace_stderr'][i], '.2g')}"
            lines.append(f"  α={al:.3f}  λ {', '.join(_fmt(v) for v in res['eigenvalues'][i])}{tr}"
                         f"  loss {_fmt(res['loss'][i])}")
        return res, "\n".join(lines)
    points = [res] if res["kind"] == "hessian" else res["results"]
    for p in points:
        conv = f"Lanczos {p['iterations']} steps" + ("" if p["converged"] else ", NOT converged (raise --iters)")
        lines.append(f"{p['snapshot']} (BN {res['bn_mode']}): λ {', '.join(_fmt(v) for v in p['eigenvalues'])} "
                     f"({conv})")
        if p["trace"] is not None:
            lines.append(f"  trace {_fmt(p['trace'])} ± {_fmt(p['trace_stderr'], '.2g')} ({args.probes} probes)")
        lines.append(f"  loss {_fmt(p['loss'])}, gradient norm {_fmt(p['grad_norm'])}, {p['hvps']} Hessian-vector "
                     f"products in {_fmt(p['seconds'], '.1f')} s")
    return res, "\n".join(lines)


def cmd_connect(args: argparse.Namespace) -> tuple[dict, str]:
    res = connect(args.a, args.b, curve=args.curve, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                  weight_decay=args.wd, optimizer=args.optimizer, train_batch_size=args.train_batch_size,
                  num=args.num, seed=args.seed, name=args.name or "connect", chunk=args.chunk, **_eval_kwargs(args))
    lines = [f"{res['curve']} curve {res['a']} -> {res['b']} ({len(res['alphas'])} points, BN {res['bn_mode']})"]
    for key in res["barriers"]:
        c, ln = res["barriers"][key], res["line_barriers"][key]
        lines.append(f"  {key:<12} barrier: curve {_fmt(c['barrier'], '+.4f')} at t={_fmt(c['alpha'], '.3f')}, "
                     f"line {_fmt(ln['barrier'], '+.4f')} at t={_fmt(ln['alpha'], '.3f')}")
    if res.get("bend"):
        lines.append(f"  control point stored as {res['bend']}")
    return res, "\n".join(lines)


def register(subparsers: Any) -> None:
    """Add `hessian` and `connect` to the `landscape` subcommands."""
    p = command(subparsers, "hessian", "Hessian spectrum: top-k eigenvalues, trace, spectral density",
                "landscape hessian ft.pt --model M --data tensors:train.pt --top-k 2 --trace --out study")
    p.add_argument("snapshots", nargs="*", metavar="CKPT", help=".pt checkpoints or STORE:NAME snapshots")
    p.add_argument("--top-k", type=int, default=1, help="largest eigenvalues to compute (Lanczos)")
    p.add_argument("--trace", action="store_true", help="Hutchinson trace with its standard error")
    p.add_argument("--density", action="store_true", help="spectral density by stochastic Lanczos quadrature")
    p.add_argument("--along", nargs=2, metavar=("A", "B"), help="at points of the line from A to B instead")
    p.add_argument("--num", type=int, default=5, help="points on the line (with --along)")
    p.add_argument("--probes", type=int, default=100, help="Rademacher probes for the trace")
    p.add_argument("--iters", type=int, default=100, help="Lanczos steps (most, for top-k; each, for the density)")
    p.add_argument("--tol", type=float, default=1e-4, help="relative Ritz residual at which top-k stops")
    p.add_argument("--density-runs", type=int, default=1, help="SLQ runs averaged into the density")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--name", default=None, help="name of the result in the store")
    add_common(p)
    p.set_defaults(func=cmd_hessian)

    p = command(subparsers, "connect", "train a low-loss curve between two snapshots (Bezier / polychain)",
                "landscape connect m1.pt m2.pt --curve bezier --model M --data tensors:train.pt --epochs 20 "
                "--out study")
    p.add_argument("a", help="the snapshot at t = 0: a .pt checkpoint or STORE:NAME")
    p.add_argument("b", help="the snapshot at t = 1")
    p.add_argument("--curve", choices=CURVES, default="bezier", help="a quadratic Bezier curve or a two-segment "
                   "polygonal chain, with one trained control point")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of the control point")
    p.add_argument("--lr", type=float, default=0.05, help="base learning rate (Garipov et al.'s schedule)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--wd", type=float, default=0.0, help="L2 penalty on the curve's points")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="optimizer of the control point")
    p.add_argument("--train-batch-size", type=int, default=128, help="samples per training step")
    p.add_argument("--num", type=int, default=21, help="values of t on [0, 1] evaluated")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--name", default=None, help="name of the result in the store")
    add_common(p)
    p.set_defaults(func=cmd_connect)
