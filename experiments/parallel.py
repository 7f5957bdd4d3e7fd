"""A study on many ranks: `torchrun --nproc-per-node=N -m landscape run CONFIG --out DIR` (or `demo`).

Nothing changes for one process. Under torchrun (landscape.core.distributed joins the ranks):

Training. A unit is an independent training run (one member per rank, never data-parallel
training of one member). The study goes in rounds: rank 0 takes every unit whose starting
snapshot is finished, deals them out so that the ranks get about the same work (the longest
first, each to the least loaded rank), and sends with the deal the starting snapshots the units
need (a Garipov FGE segment's with the optimizer state the next segment carries on with); every
rank trains its units; rank 0 receives the results and stores each (predictions,
then the snapshot that marks it done) in plan order. A unit is the same pure function of its
start and its seed on any rank, so the store ends as in one process, bit for bit (with the same
threads per process). Only rank 0 writes; the other ranks need no shared file system to train.

Analysis. Each seed's analysis and the first seed's extras (the plane, the sharpness, the
curves: one item each) are dealt out the same way. Rank 0 analyses into the store. Another rank reads the study's records from the
store and writes its results to a scratch store of its own (a temporary folder that sees the
store's finished results, so a rerun recomputes nothing), then sends the new objects, which rank
0 files into the store unchanged. The analyses read the store on every rank: a study across
machines needs its output folder on a file system every machine sees.

Failure: as in landscape.core.distributed. A lost rank ends every rank within a bounded time with one
line; what rank 0 stored stays; the rerun trains and analyses only what is missing (a rank's
analysis share is kept when it is sent, at the end of the analysis).
"""
from __future__ import annotations

import heapq
import os
import shutil
import tempfile
from typing import Any, Hashable, Sequence

from landscape.core import distributed
from landscape.store.store import KINDS, Store

from .samplers import Unit
from .seed_analysis import EXTRAS, analyze_core, analyze_extras, merge_extras, sharpness_methods


def deal(costs: Sequence[tuple[Hashable, float]], size: int) -> list[list[Hashable]]:
    """Items to `size` ranks, the costliest first, each to the rank with the least work so far
    (ties to the lower rank); each rank's items keep the order they were given in."""
    order = {key: i for i, (key, _) in enumerate(costs)}
    heap = [(0.0, r) for r in range(size)]
    out: list[list[Hashable]] = [[] for _ in range(size)]
    for key, cost in sorted(costs, key=lambda kc: (-kc[1], order[kc[0]])):
        load, r = heapq.heappop(heap)
        out[r].append(key)
        heapq.heappush(heap, (load + float(cost), r))
    return [sorted(keys, key=order.__getitem__) for keys in out]


def unit_cost(prep: Any, u: Unit) -> float:
    """Samples a unit trains on: its epochs times its task's training set."""
    task = prep.source if u.kind == "pretrain" else prep.target
    return float(u.epochs) * task.train_size()


# ----------------------------------------------------------------------------------------------
# training


def train(prep: Any, runner: Any, todo: list[Unit]) -> None:
    """Every unit of `todo` (rank 0's list; the others' is ignored), trained across the ranks."""
    w = distributed.world()
    by_name = {u.name: u for u in prep.units}
    remaining = [u.name for u in todo]  # rank 0's bookkeeping

    def next_round(_: list) -> dict[str, Any] | None:
        if not remaining:
            return None
        pending = set(remaining)
        ready = [n for n in remaining if by_name[n].parent not in pending]
        work = deal([(n, unit_cost(prep, by_name[n])) for n in ready], w.size)
        parents = {by_name[n].parent for n in ready} - {None}
        # embedded fine-tunings start from a pre-training of the study; real data from files
        ship = {p: runner.snapshot(p) for p in sorted(parents) if p in by_name}
        return {"work": work, "ship": ship}

    while True:
        _, job = distributed.exchange(None, next_round)
        if job is None:
            return
        runner.pin(job["ship"])
        mine = [runner.train_unit(by_name[n]) for n in job["work"][w.rank]]

        def store_round(results: list[list[Any]]) -> None:
            finished = {f.name: f for fs in results for f in fs}
            for name in [n for n in remaining if n in finished]:  # plan order
                with distributed.shielded():
                    runner.record(finished[name])
                remaining.remove(name)

        try:
            distributed.exchange(lambda: mine, store_round)
        except distributed.PeerLost:
            if w.writer:  # what rank 0 trained in the failed round is kept
                with distributed.shielded():
                    for f in mine:
                        runner.record(f)
            raise
        runner.pin({})


# ----------------------------------------------------------------------------------------------
# analysis


class ScratchStore(Store):
    """A rank's own store for its analysis results that also sees the study store's finished
    objects (read only), so what is finished there is read, not recomputed."""

    def __init__(self, path: str, base: Store) -> None:
        super().__init__(path, mode="a")
        self.base = base

    def _own(self, kind: str, name: str) -> bool:
        return super().has(kind, name)

    def has(self, kind: str, name: str) -> bool:
        return self._own(kind, name) or self.base.has(kind, name)

    def read(self, kind: str, name: str, skip: Sequence[str] = ()):
        return super().read(kind, name, skip) if self._own(kind, name) else self.base.read(kind, name, skip)

    def read_attrs(self, kind: str, name: str) -> dict[str, Any]:
        return super().read_attrs(kind, name) if self._own(kind, name) else self.base.read_attrs(kind, name)

    def datasets(self, kind: str, name: str) -> dict[str, list[int]]:
        return super().datasets(kind, name) if self._own(kind, name) else self.base.datasets(kind, name)

    def new_objects(self) -> list[tuple[str, str, bytes]]:
        """(kind, name, file bytes) of every object this rank finished here."""
        return [(k, n, self.object_image(k, n)) for k in KINDS for n in self.names(k)]


def _analysis_items(prep: Any) -> list[tuple[tuple[str, int], float]]:
    """(("core", seed index) or (extra, 0), its rough cost in line points: one point is a BN
    recompute and two evaluations, a Hessian-vector product about one and a half)."""
    an = prep.cfg["analysis"]
    items = []
    for i, plan in enumerate(prep.plans):
        members = {n for names in plan.members.values() for n in names}
        pairs = sum(m.members * (m.members - 1) // 2 for m in prep.cfg.methods if an["pairwise"] and m.pairwise)
        items.append((("core", i), len(members) * (an["line_points"] - 1) + pairs * (an["pairwise_points"] - 2)))
    cost = {"plane": an["plane_points"] ** 2,
            "sharpness": 1.5 * len(sharpness_methods(prep.cfg)) * an["sharpness_members"]
            * (an["hessian_iters"] + an["hessian_probes"]),
            "curves": 2 * an["curve_epochs"] * an["curve_points"]}
    items += [((part, 0), float(cost[part])) for part in EXTRAS if an[part]]
    return items


def analyze(prep: Any, store: Store, runner: Any, quiet: bool,
            scratch_root: str | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """Every seed's analysis across the ranks; [(plan, results)] per seed on every rank."""
    w = distributed.world()
    items = _analysis_items(prep)
    mine = deal(items, w.size)[w.rank]

    def run(out_store: Store) -> dict:
        done: dict[tuple[str, int], dict] = {}
        with distributed.alone():
            for kind, i in mine:
                q = quiet or not w.writer
                done[(kind, i)] = (analyze_core(prep, out_store, runner, q, prep.plans[i], records=store)
                                   if kind == "core" else
                                   analyze_extras(prep, out_store, runner, q, prep.plans[i], records=store,
                                                  parts=(kind,)))
        return done

    if w.writer:
        local: tuple[dict, list] = (run(store), [])
    else:
        folder = tempfile.mkdtemp(prefix=f"landscape-rank{w.rank}-", dir=scratch_root)
        try:
            with ScratchStore(os.path.join(folder, "results"), store) as scratch:
                local = (run(scratch), scratch.new_objects())
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def file_and_merge(values: list[tuple[dict, list]]) -> dict:
        results: dict = {}
        for done, objects in values:
            for kind, name, image in objects:
                with distributed.shielded():
                    store.write_image(kind, name, image)
            results.update(done)
        return results

    _, results = distributed.exchange(lambda: local, file_and_merge)
    out = []
    for i, plan in enumerate(prep.plans):
        res = results[("core", i)]
        for part in EXTRAS:
            if (part, i) in results:
                merge_extras(res, results[(part, i)])
        out.append((plan, res))
    return out
