"""The `landscape` command: argparse subcommands over the functions in landscape.api (each
prints its result's `to_dict()`: `--json` as is, else a summary of it).

Every subcommand of the toolkit is registered here explicitly; other packages (`experiments`)
add theirs through one documented hook, the `landscape.commands` entry-point group (`_plugins`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
import threading
from importlib.metadata import entry_points
from typing import Any, Callable, Sequence

from landscape.analyses.align import METHODS as ALIGN_METHODS
from landscape.core import distributed
from landscape.core.bn import BN_MODES
from landscape.core.errors import LandscapeError
from landscape.core.loader import load_callable
from landscape.core.signals import mark_stop, resend_swallowed_stops
from landscape.exports import FORMATS, export
from landscape.geometry.curves import CURVES, OPTIMIZERS
from landscape.geometry.directions import NORMALIZATIONS
from landscape.store.store import KINDS, package_versions
from landscape_kernels import PRECISIONS

from . import api, view


def _prefixes(text: str) -> list[str]:
    parts = [t.strip() for t in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"empty prefix in {text!r}: give PREFIX[,PREFIX...], "
                                         "e.g. projector.,predictor.")
    return parts


def add_ignore_keys(p: argparse.ArgumentParser) -> None:
    """--ignore-keys: checkpoint keys to skip (a BYOL projector, an EMA copy), listed in the output."""
    p.add_argument("--ignore-keys", type=_prefixes, action="append", default=None, metavar="PREFIX[,PREFIX...]",
                   help="skip checkpoint keys that start with these prefixes (e.g. projector.,predictor. of a "
                   "BYOL checkpoint); the keys skipped are listed in the output. Other keys that are not in "
                   "the model are refused")


def ignore_prefixes(args: argparse.Namespace) -> list[str]:
    """The --ignore-keys prefixes of a parsed command line (repeated options joined)."""
    return [p for group in (getattr(args, "ignore_keys", None) or []) for p in group]


def _listed_skipped(skipped: dict[str, list[str]], shown: int = 6) -> str:
    lines = []
    for path, keys in skipped.items():
        more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
        lines.append(f"ignored {len(keys)} keys of {path} (--ignore-keys): {', '.join(keys[:shown])}{more}")
    return "\n".join(lines)


MODEL_HELP = ("built-in name (small_cnn, tiny_cnn, mlp, vit; small_cnn:width=N, vit:patch=4,dim=64,depth=2,"
              "heads=2), torchvision:NAME or package.module:factory")
DATA_FORMS = ("tensors:PATH, cifar10:ROOT, cifar100:ROOT, imagefolder:ROOT, dataset:package.module:factory[:split] "
              "(your own map-style Dataset) or synthetic[:k=v,...]")


def add_common(p: argparse.ArgumentParser, evaluation: bool = True) -> None:
    """Options every analysis command shares."""
    if evaluation:
        p.add_argument("--model", required=True, help=MODEL_HELP)
        p.add_argument("--num-classes", type=int, default=None, help="classes of the model's head")
        p.add_argument("--data", default=None, help=f"training data: {DATA_FORMS}")
        p.add_argument("--test-data", default=None, help="test data, same forms as --data")
        p.add_argument("--bn", choices=("auto", *BN_MODES), default="auto",
                       help="BatchNorm statistics at each point: recompute them on --data, keep the snapshots' "
                       "buffers (moved with the weights on lines and through-planes), repair, or auto: recompute "
                       "when the model has BatchNorm and --data is given, else keep. recompute is REPAIR's "
                       "special case for BN networks (it corrects the statistics before BN's affine); repair "
                       "(REPAIR, Jordan et al. 2023) also rescales each BN output per channel (a network without "
                       "BN: each Conv/Linear output but the last) to the endpoints' interpolated mean and std, "
                       "measured on --bn-samples of --data; interpolate, barriers and plane --through only "
                       "(a random, PCA or Hessian plane has no endpoints)")
        p.add_argument("--loss", default="ce", metavar="ce|mse|module:callable",
                       help="ce: cross-entropy on class labels (accuracy reported); mse: regression on float "
                       "targets (loss only); module:callable: your loss(outputs, labels), the batch mean")
        p.add_argument("--precision", choices=(*PRECISIONS, "auto"), default="exact",
                       help="matmul precision: exact fp32; tf32 or bf16 tensor cores on CUDA (faster, ~1e-3 "
                       "relative error per product); auto follows torch.backends.cuda.matmul.allow_tf32")
        p.add_argument("--bn-samples", type=int, default=2000, help="training samples for BN recompute")
        p.add_argument("--batch-size", type=int, default=250, help="samples per forward pass")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
        p.add_argument("--out", default=None, help="store folder to write (created if new; resumable)")
        p.add_argument("--overwrite", action="store_true", help="replace a result of the same name")
        p.add_argument("--chunk", type=int, default=None,
                       help="points evaluated and saved together (the unit of progress and resume)")
        add_ignore_keys(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(model=args.model, data=args.data, test_data=args.test_data, bn=args.bn, out=args.out,
                overwrite=args.overwrite, device=args.device, num_classes=args.num_classes,
                batch_size=args.batch_size, bn_samples=args.bn_samples, quiet=args.quiet, chunk=args.chunk,
                loss_fn=args.loss, precision=args.precision, ignore_keys=ignore_prefixes(args))


def _fmt_number(v: Any, fmt: str = "+.4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


def _fmt_g(v: Any, fmt: str = ".4g") -> str:
    return str(v) if isinstance(v, bool) else _fmt_number(v, fmt)


def _fmt_barriers(barriers: dict) -> str:
    return "\n".join(f"  {k:<12} barrier {_fmt_number(v['barrier'])} at α={_fmt_number(v['alpha'], '.3f')}"
                     for k, v in barriers.items())


def _diverged(res: dict) -> str:
    """The summary line's note on points whose loss was NaN or inf."""
    return f"; {res['diverged']} of {res['points']} points diverged (loss NaN or inf)" if res.get("diverged") else ""


def cmd_interpolate(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.interpolate(args.a, args.b, num=args.num, alpha_range=args.alpha_range, name=args.name,
                          align=args.align, **_eval_kwargs(args)).to_dict()
    lines = [f"line {res['a']} -> {res['b']} ({len(res['alphas'])} points, BN {res['bn_mode']}){_diverged(res)}",
             _fmt_barriers(res["barriers"])]
    return res, "\n".join(lines)


def cmd_barriers(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.barriers(args.snapshots, num=args.num, alpha_range=args.alpha_range, name=args.name,
                       align=args.align, **_eval_kwargs(args)).to_dict()
    names = res["snapshots"]
    lines = [f"barriers between {len(names)} snapshots (BN {res['bn_mode']}){_diverged(res)}"]
    for key in [k for k in res if k.endswith("_barrier")]:
        lines.append(f"{key}:")
        for i, row in enumerate(res[key]):
            lines.append(f"  [{i}] " + " ".join(f"{_fmt_number(v, '8.4f'):>8}" for v in row) + f"   {names[i]}")
    return res, "\n".join(lines)


def cmd_plane(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.plane(args.center, through=args.through, random=args.random, pca=args.pca, seed=args.seed,
                    ignore_bias_bn=not args.include_bias_bn, x=args.x, y=args.y, project_onto=args.project or (),
                    coords=args.coords, hessian_directions=args.hessian_directions,
                    normalization=args.normalization, align=args.align,
                    name=args.name, **_eval_kwargs(args)).to_dict()
    key = next(k for k in ("test_loss", "train_loss") if k in res)
    vals = [v for row in res[key] for v in row if isinstance(v, (int, float))]
    span = f"{key} min {min(vals):.4f} max {max(vals):.4f}" if vals else f"no finite {key}"
    lines = [f"plane {res['name']}: {len(res['xcoordinates'])} x {len(res['ycoordinates'])} points "
             f"({res.get('unit', 'coordinates')}), BN {res['bn_mode']}, {span}{_diverged(res)}"]
    lines += [f"  {p['name']}: ({p['x']:.4f}, {p['y']:.4f}), distance {p['distance']:.4g}" for p in res["projections"]]
    return res, "\n".join(lines)


def cmd_ensemble(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.ensemble(args.members, model=args.model, data=args.data, val_data=args.val_data, out=args.out,
                       name=args.name, overwrite=args.overwrite, keep_predictions=args.keep_predictions,
                       fp16=args.fp16, orders=args.orders, seed=args.seed, device=args.device,
                       num_classes=args.num_classes, batch_size=args.batch_size, quiet=args.quiet,
                       ignore_keys=ignore_prefixes(args)).to_dict()
    rows = res["rows"]
    keys = [k for k in ("acc", "nll", "ece", "brier", "member_acc", "disagreement", "kl", "cal_nll") if k in rows[0]]
    lines = [f"members ({len(res['members'])}):"]
    lines += [f"  [{i}] {n}: acc {_fmt_number(a, '.4f')}, nll {_fmt_number(nll, '.4f')}"
              for i, (n, a, nll) in enumerate(zip(res["members"], res["member_accuracies"], res["member_nlls"]))]
    lines.append("size " + "".join(f"{k:>13}" for k in keys))
    lines += [f"{r['size']:>4} " + "".join(f"{_fmt_number(r[k], '.4f'):>13}" for k in keys) for r in rows]
    for key, values in (res.get("orders_mean") or {}).items():
        if key in keys:
            lines.append(f"{key} averaged over {args.orders} random member orders: "
                         + " ".join(_fmt_number(v, ".4f") for v in values))
    for warning in res.get("warnings", []):
        lines.append(f"warning: {warning}")
    return res, "\n".join(lines)


def cmd_plot(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.plot(args.file, args.name, out=args.output, kind=args.kind, metric=args.metric, style=args.style,
                   log=args.log).to_dict()
    return res, f"wrote {res['figure']}"


def cmd_view(args: argparse.Namespace) -> tuple[dict, str]:
    res = view.view_page(args.file, args.names or None, out=args.output)
    skipped = "".join(f"\nleft out: {s}" for s in res["skipped"])
    return res, f"wrote {res['file']} ({len(res['results'])} results){skipped}"


def cmd_export(args: argparse.Namespace) -> tuple[dict, str]:
    res = export(args.file, args.name, args.format, args.output, metric=args.metric, log=args.log)
    return res, f"wrote {res['file']} ({res['format']})"


def cmd_info(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.info(args.file).to_dict()
    lines = [f"{res['path']} (schema {res['schema_version']})"]
    keys = ("method", "member", "cycle", "lr", "seed", "bn_mode", "complete", "kind", "normalization", "center")
    for kind in KINDS:
        for name, entry in res.get(kind, {}).items():
            shapes = ", ".join(f"{k}{v}" for k, v in entry["datasets"].items() if "/" not in k)
            attrs = {**(entry["attrs"].get("meta") or {}), **entry["attrs"]}
            shown = ", ".join(f"{k}={attrs[k]}" for k in keys if attrs.get(k) is not None)
            lines.append(f"  {kind[:-1] if kind.endswith('s') else kind:<10} {name}: {shapes}"
                         + (f"  [{shown}]" if shown else "")
                         + (f"  DAMAGED: {entry['damaged']}" if entry.get("damaged") else ""))
            found = entry.get("values")  # what the result found, beside its shapes
            if kind == "directions" and found:
                lines.append(f"{'':13}explained variance " + ", ".join(
                    f"{100 * v:.1f}%" if isinstance(v, (int, float)) else str(v)
                    for v in found["explained_variance_ratio"]))
            elif found and view.key_values_text(kind, found):
                lines.append(f"{'':13}{view.key_values_text(kind, found)}")
    return res, "\n".join(lines)


EVAL_OPTS = "--model M --data tensors:train.pt --test-data tensors:test.pt"


def command(sub, name: str, help: str, example: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose help shows every default and an example."""
    return sub.add_parser(name, help=help, description=description or help, epilog=f"example:\n  {example}",
                          formatter_class=_HelpFormatter, allow_abbrev=False)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a default where there is one (not for flags and options that default to nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _add_align_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--align", choices=ALIGN_METHODS, default=None,
                   help=f"{what} (Git Re-Basin): by weight matching, or by activation correlations on the data's "
                   "first 2000 inputs; see `landscape align`")


def cmd_align(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.align(args.a, args.b, model=args.model, data=args.data, test_data=args.test_data, method=args.method,
                    samples=args.samples, seed=args.seed, max_iter=args.max_iter, out=args.out, name=args.name,
                    overwrite=args.overwrite, device=args.device, num_classes=args.num_classes,
                    batch_size=args.batch_size, quiet=args.quiet, ignore_keys=ignore_prefixes(args)).to_dict()
    sizes = ", ".join(f"{g['name']} ({g['size']}{'' if g['block'] == 1 else ' heads'})" for g in res["groups"])
    lines = [f"{res['source']} aligned to {res['aligned_to']} by {res['align_method']} matching: "
             f"{res['moved_units']} units moved in {len(res['groups'])} groups",
             f"  groups: {sizes}",
             f"  distance to {res['aligned_to']}: {res['distance_before']:.4g} before, "
             f"{res['distance_after']:.4g} after"]
    if res.get("left_in_place"):
        lines.append(f"  left in place (no layer whose outputs are their units): {', '.join(res['left_in_place'])}")
    if res.get("snapshot"):
        lines.append(f"  stored as {res['snapshot']}" + ("" if res["computed_now"] else " (already there)"))
    return res, "\n".join(lines)


def _add_align(subparsers: Any) -> None:
    p = command(subparsers, "align", "permute B's hidden units to match A's (weight or activation matching)",
                f"landscape align a.pt b.pt {EVAL_OPTS} --out study --name b-to-a",
                description="Git Re-Basin (Ainsworth et al., 2023): the permutation of B's hidden units that "
                "matches A's, found from the model's structure (traced with torch.fx: MLPs, CNNs with "
                "BatchNorm/LayerNorm/GroupNorm, ResNets with their residual units tied, attention heads as "
                "wholes). The aligned snapshot computes B's function; it is stored with the permutation and the "
                "matching's objective, and `STORE:NAME` uses it like any snapshot.")
    p.add_argument("a", help="the reference snapshot: a .pt checkpoint or STORE:NAME")
    p.add_argument("b", help="the snapshot whose units are permuted")
    p.add_argument("--method", choices=ALIGN_METHODS, default="weight",
                   help="weight: alternating linear assignments on the weights; activation: correlations of the "
                   "units' outputs on the data")
    p.add_argument("--samples", type=int, default=2000, help="activation matching: inputs correlated on")
    p.add_argument("--max-iter", type=int, default=100, help="weight matching: sweeps at most")
    p.add_argument("--seed", type=int, default=0, help="weight matching: seed of the order of the layers")
    p.add_argument("--name", default=None, help="name of the aligned snapshot (default B-to-A)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--num-classes", type=int, default=None, help="classes of the model's head")
    p.add_argument("--data", default=None, help=f"inputs to trace the model with (and to correlate on): {DATA_FORMS}")
    p.add_argument("--test-data", default=None, help="used instead of --data when that is not given")
    p.add_argument("--batch-size", type=int, default=250, help="samples per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--out", default=None, help="store folder to write the aligned snapshot to")
    p.add_argument("--overwrite", action="store_true", help="replace an aligned snapshot of the same name")
    add_ignore_keys(p)
    add_common(p, evaluation=False)
    p.set_defaults(func=cmd_align)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="landscape", description="Loss-landscape analysis for PyTorch models: "
                                     "lines, barriers, planes and ensembles of snapshots, stored in a resumable "
                                     "store.", epilog="run `landscape COMMAND --help` for a command's options "
                                     "and an example", formatter_class=_HelpFormatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"landscape {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = command(sub, "interpolate", "metrics and barriers on the line between two snapshots",
                 f"landscape interpolate a.pt b.pt {EVAL_OPTS} --alpha-range -0.5:1.5:41 --out study")
    p.add_argument("a", help="the snapshot at α = 0: a .pt/.pth checkpoint or STORE:NAME")
    p.add_argument("b", help="the snapshot at α = 1")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num", type=int, default=21, help="points on [0, 1]")
    g.add_argument("--alpha-range", default=None, metavar="MIN:MAX:NUM",
                   help="NUM points from MIN <= 0 to MAX >= 1 (0 and 1 always included)")
    p.add_argument("--name", default="interpolate", help="name of the result in the store")
    _add_align_option(p, "B's hidden units permuted to match A's before the line is computed")
    add_common(p)
    p.set_defaults(func=cmd_interpolate)

    p = command(sub, "barriers", "barrier matrices between every pair of snapshots",
                 f"landscape barriers m0.pt m1.pt m2.pt {EVAL_OPTS} --out study")
    p.add_argument("snapshots", nargs="+", help="two or more .pt checkpoints or STORE:NAME snapshots")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num", type=int, default=11, help="points per line on [0, 1]")
    g.add_argument("--alpha-range", default=None, metavar="MIN:MAX:NUM",
                   help="points per line from MIN <= 0 to MAX >= 1 (barriers use [0, 1])")
    p.add_argument("--name", default="barriers", help="name of the result in the store")
    _add_align_option(p, "every snapshot's hidden units permuted to match the first's before")
    add_common(p)
    p.set_defaults(func=cmd_barriers)

    p = command(sub, "plane", "a 2D loss plane around a snapshot",
                 f"landscape plane ft.pt --through m1.pt m2.pt {EVAL_OPTS} --x -0.5:1.5:21 --y -0.5:1.5:21 "
                 "--out study")
    p.add_argument("center", help="the snapshot at (0, 0): a .pt/.pth checkpoint or STORE:NAME")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--through", nargs=2, metavar=("B", "C"), help="the plane through CENTER, B and C")
    g.add_argument("--random", choices=NORMALIZATIONS,
                   help="two random directions with this normalisation")
    g.add_argument("--pca", nargs="+", metavar="S", help="top two PCA directions of a trajectory of snapshots")
    g.add_argument("--hessian-directions", action="store_true",
                   help="the top two Hessian eigenvectors at CENTER (normalised as --normalization says)")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="filter",
                   help="--hessian-directions: normalisation of the eigenvectors")
    p.add_argument("--seed", type=int, default=0, help="random directions: seed of the first (the second: +1)")
    p.add_argument("--include-bias-bn", action="store_true", help="random directions also move biases and BN")
    p.add_argument("--x", default=None, metavar="MIN:MAX:NUM",
                   help="x grid (default: around the snapshots; -1:1:11 for random planes)")
    p.add_argument("--y", default=None, metavar="MIN:MAX:NUM", help="y grid (default as --x)")
    p.add_argument("--project", nargs="+", default=None, metavar="S", help="more snapshots to project onto the plane")
    p.add_argument("--coords", choices=tuple(api.COORD_UNITS), default="relative",
                   help="through-planes: relative puts B at (1, 0) and C at (x, 1); distance uses weight-space "
                   "distances")
    p.add_argument("--name", default="plane", help="name of the result in the store")
    _add_align_option(p, "with --through: B's and C's hidden units permuted to match CENTER's first")
    add_common(p)
    p.set_defaults(func=cmd_plane)

    p = command(sub, "ensemble", "ensemble metrics for every size 1..K",
                 "landscape ensemble m0.pt m1.pt m2.pt --model M --data tensors:test.pt --val-data tensors:val.pt "
                 "--out study",
                 description="Accuracy, NLL, ECE (15 bins), Brier score (squared error summed over classes, "
                 "averaged over samples), member accuracy, disagreement and KL to the ensemble for the ensembles "
                 "of the first m members, m = 1..K; temperature-scaled NLL with --val-data.")
    p.add_argument("members", nargs="+", help=".pt checkpoints, STORE:SNAPSHOT or STORE:ENSEMBLE (kept predictions)")
    p.add_argument("--model", default=None, help="model spec (not needed for stored predictions)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the model's head (default: from the data)")
    p.add_argument("--data", default=None, help="evaluation data (the test split for split datasets)")
    p.add_argument("--val-data", default=None, help="held-out data to fit the temperature for calibrated NLL")
    p.add_argument("--orders", type=int, default=0, help="also average over this many random member orders")
    p.add_argument("--seed", type=int, default=0, help="seed of the random member orders")
    p.add_argument("--keep-predictions", action="store_true", help="store member logits (chunked)")
    p.add_argument("--fp16", action="store_true", help="store kept predictions in fp16")
    p.add_argument("--batch-size", type=int, default=500, help="samples per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", default=None, help="store folder to write (created if new)")
    p.add_argument("--name", default="ensemble", help="name of the result in the store")
    p.add_argument("--overwrite", action="store_true", help="replace a result of the same name")
    add_ignore_keys(p)
    add_common(p, evaluation=False)
    p.set_defaults(func=cmd_ensemble)

    p = command(sub, "plot", "draw a stored result", "landscape plot study plane --style filled --log -o plane.png")
    p.add_argument("file", help="the store folder")
    p.add_argument("name", help="the curve, surface, barrier matrix, ensemble, hessian or connection to draw (the "
                   "hessians of several snapshots, NAME-0, NAME-1, ..., together as NAME)")
    p.add_argument("--kind", choices=view.RESULT_KINDS, default=None,
                   help="the kind of result, where several kinds hold one of that name")
    p.add_argument("--output", "-o", default=None, help="figure file (.png, .pdf, .svg; default NAME.png beside the "
                   "store)")
    p.add_argument("--metric", default=None, help="what to draw (default: test loss, else train loss; nll for "
                   "ensembles)")
    p.add_argument("--style", choices=("contour", "filled", "heatmap", "3d"), default="contour",
                   help="surfaces only")
    p.add_argument("--log", action="store_true", help="log colour/axis scale")
    add_common(p, evaluation=False)
    p.set_defaults(func=cmd_plot)

    p = command(sub, "export", "a stored curve or surface in another tool's format",
                 "landscape export study plane --format vtp -o plane.vtp",
                 description="Write a stored curve or surface for other tools: goldstein (the HDF5 layout that "
                 "Goldstein et al.'s plot_1D.py, plot_2D.py and h52vtp.py read: root datasets, meshgrid(x, y) "
                 "order, accuracies in percent), vtp (ParaView) or csv.")
    p.add_argument("file", help="the store folder")
    p.add_argument("name", help="the curve or surface to export")
    p.add_argument("--format", choices=FORMATS, required=True, help="output format")
    p.add_argument("--output", "-o", required=True, help="file to write (replaced whole if it exists)")
    p.add_argument("--metric", default=None, help="vtp: the metric used as height (default test_loss, else "
                   "train_loss)")
    p.add_argument("--log", action="store_true", help="vtp: log of the height")
    add_common(p, evaluation=False)
    p.set_defaults(func=cmd_export)

    p = command(sub, "info", "list what a store holds", "landscape info study --json")
    p.add_argument("file", help="the store folder")
    add_common(p, evaluation=False)
    p.set_defaults(func=cmd_info)

    p = command(sub, "view", "an interactive HTML page of stored results (opens offline)",
                "landscape view study plane interpolate -o view.html",
                description="Write one self-contained HTML page (plotly, its JavaScript inlined) of stored results: "
                "each surface as a rotatable 3D surface and a contour with a menu of metrics, lines and barrier "
                "matrices with their barriers, ensembles by size, Hessian spectra and connections.")
    p.add_argument("file", help="the store folder")
    p.add_argument("names", nargs="*", metavar="NAME", help="results to show (default: every finished result); "
                   "KIND/NAME where several kinds hold a name")
    p.add_argument("--output", "-o", default=None, help="the .html file to write (default: STORE.html beside the "
                   "store folder; replaced whole if it exists)")
    add_common(p, evaluation=False)
    p.set_defaults(func=cmd_view)

    _add_curvature(sub)
    _add_align(sub)
    for name, register in _plugins():
        try:
            register(sub)
        except Exception as exc:  # a broken plugin costs its own commands, never the others
            _plugin_warning(name, exc)
    return parser


# The one optional hook: other packages (the toolkit's own `experiments`: `landscape run`,
# `landscape demo`) add subcommands through the `landscape.commands` entry-point group, a callable
# taking the subparsers object, so landscape never imports them by name. From a checkout that is
# not pip-installed the group is empty: `experiments.cli:register` is then used when importable.
PLUGIN_GROUP = "landscape.commands"
CHECKOUT_PLUGIN = ("experiments", "experiments.cli:register")


def _plugin_warning(name: str, exc: BaseException) -> None:
    print(f"landscape: warning: the commands of plugin {name!r} are unavailable: {type(exc).__name__}: {exc}",
          file=sys.stderr)


def _plugins() -> list[tuple[str, Callable[[Any], None]]]:
    """The plugins' register functions; one that fails to import is reported in one line and skipped."""
    eps = list(entry_points(group=PLUGIN_GROUP))
    specs = [(ep.name, ep.value) for ep in eps]
    if not specs and importlib.util.find_spec(CHECKOUT_PLUGIN[0]) is not None:
        specs = [CHECKOUT_PLUGIN]
    out = []
    for name, spec in specs:
        try:
            out.append((name, load_callable(spec, f"plugin {name!r}")))
        except LandscapeError as exc:
            print(f"landscape: warning: {exc} (its commands are unavailable)", file=sys.stderr)
    return out


def cmd_hessian(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.hessian(args.snapshots, along=args.along, num=args.num, top_k=args.top_k, trace=args.trace,
                      density=args.density, probes=args.probes, iters=args.iters, tol=args.tol,
                      density_runs=args.density_runs, seed=args.seed, name=args.name or "hessian",
                      **_eval_kwargs(args)).to_dict()
    lines = []
    if res["kind"] == "hessian_line":
        lines.append(f"Hessian along {res['a']} -> {res['b']} ({len(res['alphas'])} points, BN {res['bn_mode']})")
        for i, al in enumerate(res["alphas"]):
            tr = "" if res["trace"] is None else \
                f"  trace {_fmt_g(res['trace'][i])} ± {_fmt_g(res['trace_stderr'][i], '.2g')}"
            lines.append(f"  α={al:.3f}  λ {', '.join(_fmt_g(v) for v in res['eigenvalues'][i])}{tr}"
                         f"  loss {_fmt_g(res['loss'][i])}")
        return res, "\n".join(lines)
    points = [res] if res["kind"] == "hessian" else res["results"]
    for p in points:
        if p.get("diverged"):  # a NaN/inf loss is not a Lanczos that needs more steps
            lines.append(f"{p['snapshot']} (BN {res['bn_mode']}): the loss is not finite there "
                         f"({_fmt_g(p['loss'])}): no spectrum (stored as NaN)")
            continue
        conv = f"Lanczos {p['iterations']} steps" + ("" if p["converged"] else ", NOT converged (raise --iters)")
        lines.append(f"{p['snapshot']} (BN {res['bn_mode']}): λ {', '.join(_fmt_g(v) for v in p['eigenvalues'])} "
                     f"({conv})")
        if p["trace"] is not None:
            lines.append(f"  trace {_fmt_g(p['trace'])} ± {_fmt_g(p['trace_stderr'], '.2g')} ({args.probes} probes)")
        lines.append(f"  loss {_fmt_g(p['loss'])}, gradient norm {_fmt_g(p['grad_norm'])}, {p['hvps']} Hessian-vector "
                     f"products in {_fmt_g(p['seconds'], '.1f')} s")
    return res, "\n".join(lines)


def cmd_connect(args: argparse.Namespace) -> tuple[dict, str]:
    res = api.connect(args.a, args.b, curve=args.curve, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                      weight_decay=args.wd, optimizer=args.optimizer, train_batch_size=args.train_batch_size,
                      num=args.num, seed=args.seed, name=args.name or "connect", **_eval_kwargs(args)).to_dict()
    lines = [f"{res['curve']} curve {res['a']} -> {res['b']} ({len(res['alphas'])} points, BN {res['bn_mode']})"]
    for key in res["barriers"]:
        c, ln = res["barriers"][key], res["line_barriers"][key]
        lines.append(f"  {key:<12} barrier: curve {_fmt_g(c['barrier'], '+.4f')} at t={_fmt_g(c['alpha'], '.3f')}, "
                     f"line {_fmt_g(ln['barrier'], '+.4f')} at t={_fmt_g(ln['alpha'], '.3f')}")
    if res.get("bend"):
        epochs = args.epochs - res.get("epochs_trained_now", args.epochs)
        resumed = f" (training resumed after epoch {epochs})" if 0 < epochs < args.epochs else ""
        lines.append(f"  control point stored as {res['bend']}{resumed}")
    lines += [f"warning: {w}" for w in res.get("warnings", [])]
    return res, "\n".join(lines)



def _add_curvature(subparsers: Any) -> None:
    """`hessian` and `connect`."""
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


# commands rank 0 runs alone under torchrun (the others exit at once)
RANK0_ALONE = (cmd_plot, cmd_export, cmd_info, cmd_view, cmd_hessian, cmd_connect)


def _version() -> str:
    return package_versions()["landscape"]


def _join_negative_ranges(argv: Sequence[str]) -> list[str]:
    """Let `--x -1:1:21` through: argparse would take the leading '-' for an option."""
    out: list[str] = []
    it = iter(argv)
    for tok in it:
        if tok in ("--x", "--y", "--alpha-range"):
            nxt = next(it, None)
            out.append(tok if nxt is None else f"{tok}={nxt}")
        else:
            out.append(tok)
    return out


def _launched_rank() -> int:
    """This process's rank under torchrun (0 for one process, or an environment the command will refuse)."""
    try:
        w = distributed.launched()
    except LandscapeError:
        return 0
    return w.rank if w is not None else 0


class _Stopped(BaseException):
    """SIGTERM or SIGHUP during a command: unwinds like Ctrl-C (temporary files removed, the
    store's lock released), then one line and exit status 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise mark_stop(_Stopped(signum), signum)


def _catch_stop_signals() -> dict[int, Any]:
    """Handlers that turn SIGTERM and SIGHUP into `_Stopped` (main thread only); the previous ones.
    Under torchrun, joining the ranks replaces the SIGTERM one with the ranks' own."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, _raise_stopped)
    resend_swallowed_stops()  # a stop raised inside a finaliser is delivered again, not lost
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    previous = _catch_stop_signals()
    try:
        return _main(argv)
    except _Stopped as exc:
        name = signal.Signals(exc.signum).name
        print(f"landscape: stopped by {name} (finished chunks are saved; rerun the same command to resume)",
              file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (building the parser, plugins)
        print("landscape: interrupted", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_ranges(sys.argv[1:] if argv is None else argv))
    rank = _launched_rank()  # under torchrun only rank 0 prints results and progress
    if rank and args.func in RANK0_ALONE:
        return 0  # nothing to share out (hessian, connect: not split across ranks yet): rank 0 alone does it
    if rank:
        args.quiet = True
    try:
        result, text = args.func(args)
        if text is None:  # the command ran as local ranks (--procs), which printed: their exit status
            return int(result)
        skipped = result.get("ignored_keys") if isinstance(result, dict) else None
        if skipped:  # the checkpoint keys --ignore-keys skipped: listed, never silent
            text = f"{text}\n{_listed_skipped(skipped)}"
        stripped = result.get("stripped_prefixes") if isinstance(result, dict) else None
        for path, prefix in (stripped or {}).items():  # a wrapper's prefix taken off the keys: said, never silent
            text = f"{text}\ncheckpoint {path}: keys read with the wrapper prefix {prefix!r} stripped"
    except LandscapeError as exc:
        print(f"landscape: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("landscape: interrupted (finished chunks are saved; rerun the same command to resume)",
              file=sys.stderr)
        return 130
    except (OSError, MemoryError) as exc:  # a fault of the machine, not of the input: still one line
        what = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror and exc.filename \
            else (exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__)
        print(f"landscape: error: {' '.join(str(what).split())}", file=sys.stderr)
        return 1
    if rank:
        return 0
    try:
        print(json.dumps(result, indent=1) if args.json else text)
    except BrokenPipeError:  # `landscape ... | head`: the result is stored; the reader left
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
