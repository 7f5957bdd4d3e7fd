"""Connections in the store: a trained curve between two snapshots beside the straight line.

Evaluation, as Garipov et al.'s: at each t, BatchNorm statistics recomputed on training data at
φ_θ(t) (update_bn semantics, through the Evaluator's BN mode `recompute`), then train/test loss
and accuracy. The straight line A→B is evaluated at the same t with the same evaluator, and both
barriers (landscape.geometry.lines.curve_barriers) are reported side by side. The curve's
training is landscape.geometry.curves'.
"""
from __future__ import annotations

import copy
import io
import json
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from landscape.core.bn import recompute_bn
from landscape.core.checkpoints import Snapshot, check_same_architecture
from landscape.core.errors import LandscapeError
from landscape.core.validate import positive_int
from landscape.evaluate.engine import Evaluator, flag_nonfinite
from landscape.geometry.curves import check_training_args, curve_point, train_curve
from landscape.geometry.lines import curve_barriers, line_snapshot
from landscape.geometry.ranges import line_alphas
from landscape.store.grid import MemoryGrid
from landscape.store.store import Store, same_config

KIND = "connections"


def bend_snapshot(evaluator: Evaluator, a: Snapshot, bend: torch.Tensor, name: str,
                  meta: Mapping[str, Any]) -> Snapshot:
    """The control point as a snapshot; its BN statistics are recomputed at θ itself on the
    evaluator's training data (the bend has no statistics of its own)."""
    buffers = {k: v.clone() for k, v in a.buffers.items()}
    x = evaluator.bn_inputs()
    if x is not None:
        model = copy.deepcopy(evaluator.model)
        Snapshot(name, bend.to(a.params.dtype), a.layout, buffers).load_into(model)
        recompute_bn(model, x, evaluator.batch_size)
        buffers = {k: v.detach().cpu().clone() for k, v in model.named_buffers()}
    return Snapshot(name, bend.to(a.params.dtype), a.layout, buffers, dict(meta))


def connect(evaluator: Evaluator, a: Snapshot, b: Snapshot, *, curve: str = "bezier", alphas: np.ndarray | None = None,
            num: int = 21, epochs: int = 20, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
            optimizer: str = "sgd", train_batch_size: int = 128, seed: int = 0, store: Store | None = None,
            name: str = "connect", provenance: Mapping[str, Any] | None = None, overwrite: bool = False,
            chunk: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Train a curve from `a` to `b` on the evaluator's training data, then evaluate it and the
    straight line at the same t's (BN recomputed at every point): stored as the connection `name`
    (kind "connections": alphas, <split>_<loss|acc> for the curve, line_<split>_<loss|acc> for
    the line, done, nonfinite; attributes barriers and line_barriers) and the control point as
    the snapshot `NAME-bend` (kept even if the evaluation is cut short, so a rerun skips the
    training and evaluates only the missing points). A finished connection with the same
    arguments is returned without computing or writing."""
    check_same_architecture([a, b])
    check_training_args(curve, epochs, lr, momentum, weight_decay, optimizer, train_batch_size)
    chunk = 4 if chunk is None else positive_int(chunk, "--chunk")
    data = evaluator.loss_data()
    if data["split"] != "train":
        raise LandscapeError("connect trains the curve on training data: give --data")
    if evaluator.has_bn and evaluator.bn_mode != "recompute":
        raise LandscapeError("connect evaluates curves with BatchNorm statistics recomputed at each point: "
                             "use --bn recompute")
    ts = line_alphas(positive_int(num, "--num")) if alphas is None else np.asarray(alphas, dtype=np.float64)
    prov = dict(provenance or {})
    training = {"curve": curve, "epochs": int(epochs), "lr": float(lr), "momentum": float(momentum),
                "weight_decay": float(weight_decay), "optimizer": optimizer, "train_batch_size": int(train_batch_size),
                "seed": int(seed), "init": "midpoint", "schedule": "garipov"}
    config = {**prov, **evaluator.config, **training, "a": a.fingerprint(), "b": b.fingerprint(),
              "train_samples": data["samples"], "alphas": ts.tolist()}
    bend_name = f"{name}-bend"
    # the control point is stored (and refused) on the same terms as the connection itself
    trained = store is not None and store.resume_or_refuse("snapshots", bend_name, config, overwrite)
    metrics = evaluator.metric_names
    # the chunk (points saved together) is recorded, not fingerprinted: it changes no number, so a
    # resume may use another, as the grids' resumes may
    attrs = {**prov, "bn_mode": evaluator.bn_mode, "a": a.name, "b": b.name, "curve": curve,
             "bend": bend_name if store is not None else None, "chunk": chunk}
    if store is None:
        grid = MemoryGrid((len(ts),), metrics + [f"line_{m}" for m in metrics], {"alphas": ts})
    else:
        grid = store.open_grid(KIND, name, (len(ts),), metrics + [f"line_{m}" for m in metrics], {"alphas": ts},
                               config, attrs, overwrite)
    todo = grid.missing()
    bend: Snapshot | None = None
    if trained:
        bend = store.read_snapshot(bend_name)
    trained_now = 0  # epochs trained by this call (fewer than `epochs` when it resumes the training)
    if bend is None and grid.finished:  # finished, its control point since removed: nothing to train
        history = [float(v) for v in np.asarray(grid.fixed.get("history", []))]
    elif bend is None:
        progress = _training_progress(store, bend_name, config)
        trained_now = int(epochs) - (int(progress["epoch"]) if progress is not None else 0)
        theta, history = train_curve(evaluator.model, a, b, data["x"], data["y"], stream=data["stream"],
                                     curve=curve, epochs=epochs, lr=lr, momentum=momentum,
                                     weight_decay=weight_decay, optimizer=optimizer,
                                     batch_size=train_batch_size, seed=seed, device=evaluator.device,
                                     loss_fn=evaluator.loss_fn, quiet=quiet,
                                     progress=progress,
                                     on_epoch=_progress_saver(store, bend_name, config))
        meta = {"method": "curve_bend", "curve": curve, "a": a.name, "b": b.name, "history": history,
                **{k: v for k, v in training.items() if k != "curve"}}
        bend = bend_snapshot(evaluator, a, theta, bend_name, meta)
        if store is not None:
            store.write_snapshot(bend, bend_name, overwrite=store.has("snapshots", bend_name),
                                 attrs={"config": config})
            store.drop_progress("snapshots", bend_name)
    if bend is not None:
        history = [float(v) for v in bend.meta.get("history", [])]
        theta = bend.params
    bar = tqdm(total=len(todo), desc="curve and line", disable=quiet, unit="t", leave=False)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        values: dict[str, list[float]] = {m: [] for m in grid.metrics}
        for i in part:
            t = float(ts[i])
            on_curve = evaluator.evaluate(curve_point(curve, a.params, theta, b.params, t), a.buffers)
            line = line_snapshot(a, b, t)
            on_line = evaluator.evaluate(line.params, line.buffers)
            for m in metrics:
                values[m].append(on_curve[m])
                values[f"line_{m}"].append(on_line[m])
            bar.update(1)
        grid.write(part, _flag_nonfinite(values))
    bar.close()
    data = grid.read()
    barriers = curve_barriers(ts, {m: data[m] for m in metrics})
    line_barriers = curve_barriers(ts, {m: data[f"line_{m}"] for m in metrics})
    grid.finish(derived={"history": np.asarray(history, dtype=np.float64)},
                attrs={"barriers": barriers, "line_barriers": line_barriers})
    done, nonfinite = grid.done_mask(), grid.nonfinite()
    return {"kind": "connection", "warnings": undertrained(barriers, line_barriers, epochs), "name": name, "curve": curve, "a": a.name, "b": b.name,
            "bn_mode": evaluator.bn_mode, "alphas": ts, **{m: data[m].copy() for m in grid.metrics},
            "barriers": barriers, "line_barriers": line_barriers, "history": history,
            "bend": bend_name if store is not None else None, "control_point": bend,
            "points": int(done.size), "computed_now": int(len(todo)), "epochs_trained_now": trained_now,
            "diverged": int(nonfinite.sum()), "done": done, "nonfinite": nonfinite}


# The curve's training is saved after every epoch as the progress of its control point (the
# snapshot NAME-bend): a killed run trains on from the last epoch with the numbers of an
# uninterrupted one. The state is a torch.save image of tensors and numbers, read back with
# weights_only=True like every checkpoint.
def _progress_saver(store: Store | None, bend_name: str, config: Mapping[str, Any]):
    if store is None:
        return None
    config_json = json.dumps(config, sort_keys=True, default=str)

    def save(state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        store.write_progress("snapshots", bend_name, {"training_state": np.frombuffer(buf.getvalue(), np.uint8)},
                             {"config": config_json, "epoch": int(state["epoch"])})
    return save


def _training_progress(store: Store | None, bend_name: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    saved = store.read_progress("snapshots", bend_name) if store is not None else None
    if saved is None or not same_config(saved[1].get("config"), config) or "training_state" not in saved[0]:
        return None  # none, or another training's (it is replaced by this one's first epoch)
    try:
        return torch.load(io.BytesIO(np.asarray(saved[0]["training_state"], np.uint8).tobytes()),
                          map_location="cpu", weights_only=True)
    except Exception:  # a damaged progress file costs only the progress: train from the start
        return None


def _flag_nonfinite(values: Mapping[str, list[float]]) -> dict[str, np.ndarray]:
    return flag_nonfinite({k: np.asarray(v, dtype=np.float64) for k, v in values.items()})


def undertrained(barriers: Mapping[str, Any], line_barriers: Mapping[str, Any], epochs: int) -> list[str]:
    """A trained curve whose train-loss barrier is not below the straight line's has not found a
    better path yet (too few epochs, or too large a learning rate): said, never silent."""
    key = "train_loss" if "train_loss" in barriers else next(iter(barriers), None)
    if key is None:
        return []
    curve, line = barriers[key]["barrier"], line_barriers[key]["barrier"]
    if not (curve < line - 1e-3 * max(1.0, abs(line)) or (line <= 1e-3 and curve <= 1e-3)):  # clearly below
        return [f"the trained curve's {key.replace('_', '-')} barrier ({curve:.4g}) is not below the straight "
                f"line's ({line:.4g}) after {epochs} epochs: the curve is not trained enough; raise --epochs "
                "(or lower --lr)"]
    return []
