"""The built-in Vision Transformer (`vit:patch=...,dim=...,depth=...,heads=...`): its spec, its
shape and parameter count against the architecture's arithmetic, every analysis command on it
through the CLI, and a tiny study with it (AdamW + warmup, experiments/configs/vit_demo.toml cut
down).

References, independent of the toolkit's engine: plain fp64 forward passes of the model at the
weights each result claims to have evaluated (state dicts mixed here with torch), the ensemble's
averaged probabilities, scipy's Lanczos (`eigsh`) on fp64 Hessian-vector products from
torch.autograd.functional.hvp, and distances between the checkpoint files. The model has no
BatchNorm: `--bn auto` keeps the (absent) buffers, and the K-points-per-pass engine does not apply
(LayerNorm, attention and the class token are parametrised modules it does not run): the per-point
path serves every analysis.
"""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape import cli
from landscape.core.data import TensorData
from landscape.core.errors import LandscapeError
from landscape.core.models import ViT, build_model
from landscape.evaluate.engine import Evaluator
from landscape.store.store import Store

SPEC = "vit:patch=4,dim=16,depth=1,heads=2"
SHAPE, CLASSES = (1, 8, 8), 3


def test_the_spec_builds_the_architecture_it_names():
    m = build_model("vit:patch=4,dim=16,depth=2,heads=4,mlp=24", 5, (3, 8, 8))
    assert isinstance(m, ViT) and len(m.blocks) == 2 and m.blocks[0].attn.num_heads == 4
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    # parameters by hand: patch conv, class token, 4+1 positions, per block 2 LayerNorms + attention
    # (in_proj 3·d·d + 3d, out_proj d·d + d) + MLP (d·24 + 24 + 24·d + d), final LayerNorm, head
    d = 16
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * 24 + 24 + 24 * d + d)
    want = (3 * 16 * d + d) + d + 5 * d + 2 * block + 2 * d + (d * 5 + 5)
    assert sum(p.numel() for p in m.parameters()) == want
    mean = build_model("vit:pool=mean,dim=8,heads=2", 3, (1, 8, 8))
    assert mean.cls_token is None and mean(torch.randn(1, 1, 8, 8)).shape == (1, 3)
    assert not [b for b in m.buffers()]  # nothing for a BN mode to recompute


@pytest.mark.parametrize("spec, needle", [
    ("vit:patch=3", "not a multiple of patch=3"),
    ("vit:dim=10,heads=4", "not a multiple of heads=4"),
    ("vit:depth=0", "depth"),
    ("vit:size=4", "vit takes"),
    ("vit:pool=max", "pool must be cls or mean"),
])
def test_bad_vit_specs_are_one_line(spec, needle):
    with pytest.raises(LandscapeError, match=needle):
        build_model(spec, 3, (3, 8, 8))
    with pytest.raises(LandscapeError, match="square images"):
        build_model("vit", 3, (3, 8, 6))


# ----------------------------------------------------------------------------------------------
# the analysis commands


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster (and steadier on a shared machine) than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """40 training and 30 test images of 1×8×8 in 3 classes; v1 and v2 trained 40 Adam steps from
    seeds 1 and 2 (trained points: a clear top Hessian eigenvalue, a real barrier between them),
    v3 at its initialisation. Returns the folder and the common CLI arguments."""
    d = tmp_path_factory.mktemp("vit")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(70, *SHAPE, generator=g), torch.randint(0, CLASSES, (70,), generator=g)
    torch.save({"x": x[:40], "y": y[:40]}, d / "train.pt")
    torch.save({"x": x[40:], "y": y[40:]}, d / "test.pt")
    for i in (1, 2, 3):
        torch.manual_seed(i)
        m = build_model(SPEC, CLASSES, SHAPE)
        if i < 3:
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            for _ in range(40):
                opt.zero_grad()
                nn.functional.cross_entropy(m(x[:40]), y[:40]).backward()
                opt.step()
        torch.save(m.state_dict(), d / f"v{i}.pt")
    common = ["--model", SPEC, "--data", f"tensors:{d / 'train.pt'}", "--test-data", f"tensors:{d / 'test.pt'}",
              "--quiet"]
    return d, common


@pytest.fixture()
def here(work, monkeypatch):
    """The work folder as the current directory: checkpoints, data and the store `s` by relative path."""
    monkeypatch.chdir(work[0])
    return work


def run(*argv) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main([*argv, "--json"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


def state(work, name: str) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in torch.load(work[0] / f"{name}.pt", weights_only=True).items()}


def mix(*terms: tuple[float, dict]) -> dict[str, torch.Tensor]:
    """Σ c·state, key by key (every tensor of the ViT is a parameter)."""
    return {k: sum(c * s[k] for c, s in terms) for k in terms[0][1]}


def reference(work, st: dict, split: str) -> tuple[float, float]:
    """Loss and accuracy of the model at `st`: a plain fp64 forward pass."""
    m = build_model(SPEC, CLASSES, SHAPE).double().eval()
    m.load_state_dict(st)
    data = torch.load(work[0] / f"{split}.pt")
    with torch.no_grad():
        out = m(data["x"].double())
    return nn.functional.cross_entropy(out, data["y"]).item(), (out.argmax(1) == data["y"]).double().mean().item()


def check_point(work, res: dict, idx, st: dict) -> None:
    for split in ("train", "test"):
        loss, acc = reference(work, st, split)
        assert np.asarray(res[f"{split}_loss"])[idx] == pytest.approx(loss, rel=1e-5, abs=1e-6), (split, idx)
        assert np.asarray(res[f"{split}_acc"])[idx] == pytest.approx(acc, abs=1e-12), (split, idx)


def test_interpolate_is_the_line_of_plain_forward_passes_and_auto_keeps(here):
    res = run("interpolate", "v1.pt", "v2.pt", "--num", "5", "--out", "s", *here[1])
    assert res["bn_mode"] == "keep"  # auto on a model without BatchNorm
    a, b = state(here, "v1"), state(here, "v2")
    for i, alpha in enumerate(res["alphas"]):
        check_point(here, res, i, mix((1 - alpha, a), (alpha, b)))
    loss = np.asarray(res["train_loss"])
    assert res["barriers"]["train_loss"]["barrier"] == pytest.approx(
        max(loss - np.linspace(loss[0], loss[-1], 5)), rel=1e-6)
    assert res["barriers"]["train_loss"]["barrier"] > 0.1  # two trained networks: a real barrier
    with Store("s", mode="r") as st:
        assert st.read_attrs("curves", "interpolate")["bn_mode"] == "keep"
    # recompute asked for explicitly: nothing to recompute, the same numbers
    again = run("interpolate", "v1.pt", "v2.pt", "--num", "5", "--bn", "recompute", *here[1])
    assert again["bn_mode"] == "recompute" and again["train_loss"] == res["train_loss"]


def test_barrier_matrix_entries_are_the_lines_maxima_above_the_chord(here):
    res = run("barriers", "v1.pt", "v2.pt", "v3.pt", "--num", "3", *here[1])
    assert res["bn_mode"] == "keep"
    states = [state(here, f"v{i}") for i in (1, 2, 3)]
    alphas = np.asarray(res["alphas"])
    for key in ("train_loss", "test_error"):
        mat = np.asarray(res[f"{key}_barrier"])
        assert mat.shape == (3, 3) and np.all(np.diag(mat) == 0)
        for i in range(3):
            for j in range(i + 1, 3):
                split, metric = key.split("_")
                vals = []
                for alpha in alphas:
                    loss, acc = reference(here, mix((1 - alpha, states[i]), (alpha, states[j])), split)
                    vals.append(loss if metric == "loss" else 1 - acc)
                vals = np.asarray(vals)
                want = max(0.0, max(vals - np.linspace(vals[0], vals[-1], len(vals))))
                assert mat[i, j] == mat[j, i] == pytest.approx(want, rel=1e-5, abs=1e-6), (key, i, j)


def test_random_plane_is_centred_on_its_snapshot_and_moves_along_filter_normalised_directions(here):
    res = run("plane", "v1.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", "--out", "s", *here[1])
    assert res["bn_mode"] == "keep" and np.asarray(res["train_loss"]).shape == (3, 3)
    a = state(here, "v1")
    check_point(here, res, (1, 1), a)  # the centre is the model itself
    with Store("s", mode="r") as st:
        dirs = st.read_directions("plane")[0].double()
    model = build_model(SPEC, CLASSES, SHAPE)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(names) == sorted(a) and dirs.shape == (2, sum(p.numel() for p in model.parameters()))
    parts = []
    for d in dirs:  # Li et al.'s filter normalisation: each filter the norm of the weights'; 1-D tensors still
        chunks, i = {}, 0
        for n, p in model.named_parameters():
            chunks[n] = d[i:i + p.numel()].view(p.shape)
            i += p.numel()
            if p.dim() <= 1:
                assert not chunks[n].any(), n
            else:
                np.testing.assert_allclose(chunks[n].reshape(p.shape[0], -1).norm(dim=1),
                                           a[n].reshape(p.shape[0], -1).norm(dim=1), rtol=1e-5)
        parts.append(chunks)
    check_point(here, res, (2, 0), mix((1.0, a), (1.0, parts[0]), (-1.0, parts[1])))  # a corner: x = 1, y = −1
    assert np.ptp(np.asarray(res["train_loss"])) > 1e-3  # the plane is not flat


def test_plane_through_three_snapshots_is_their_affine_span(here):
    res = run("plane", "v1.pt", "--through", "v2.pt", "v3.pt", "--x", "-0.5:1.5:3", "--y", "0:1:2", *here[1])
    a, b, c = (state(here, f"v{i}") for i in (1, 2, 3))
    # relative coordinates: x along B − A, y along the part of C − A orthogonal to it, C at y = 1
    flat = lambda s: torch.cat([s[k].reshape(-1) for k in a])
    db, dc = flat(b) - flat(a), flat(c) - flat(a)
    p = float(db @ dc / (db @ db))
    proj = {q["name"]: q for q in res["projections"]}
    assert proj["v2.pt"]["x"] == pytest.approx(1) and proj["v2.pt"]["y"] == pytest.approx(0, abs=1e-6)
    assert proj["v3.pt"]["x"] == pytest.approx(p, rel=1e-6) and proj["v3.pt"]["y"] == pytest.approx(1)
    for i, x in enumerate(res["xcoordinates"]):
        for j, y in enumerate(res["ycoordinates"]):
            check_point(here, res, (i, j), mix((1 - x + y * (p - 1), a), (x - y * p, b), (y, c)))


def test_batched_points_do_not_apply_and_the_per_point_path_serves_the_vit(here):
    data = torch.load("train.pt")
    model = build_model(SPEC, CLASSES, SHAPE)
    with pytest.raises(LandscapeError, match="batched evaluation is not available for this model"):
        Evaluator(model, TensorData(data["x"], data["y"]), batched=True)
    assert Evaluator(model, TensorData(data["x"], data["y"])).batched is None  # the default: per point


def test_ensemble_averages_the_members_probabilities(here):
    res = run("ensemble", "v1.pt", "v2.pt", "v3.pt", "--model", SPEC, "--data", "tensors:test.pt", "--quiet")
    data = torch.load("test.pt")
    probs = []
    for i in (1, 2, 3):
        m = build_model(SPEC, CLASSES, SHAPE).double().eval()
        m.load_state_dict(state(here, f"v{i}"))
        with torch.no_grad():
            probs.append(torch.softmax(m(data["x"].double()), 1))
    assert [r["size"] for r in res["rows"]] == [1, 2, 3]
    for row in res["rows"]:
        p = torch.stack(probs[:row["size"]]).mean(0)
        assert row["nll"] == pytest.approx(-p[torch.arange(len(p)), data["y"]].log().mean().item(), rel=1e-5)
        assert row["acc"] == pytest.approx((p.argmax(1) == data["y"]).double().mean().item())
    np.testing.assert_allclose(res["member_accuracies"],
                               [(q.argmax(1) == data["y"]).double().mean().item() for q in probs])


def test_hessian_top_eigenvalues_match_scipy_lanczos_on_fp64_products(here):
    res = run("hessian", "v1.pt", "--top-k", "2", *here[1])
    assert res["converged"] and res["bn_mode"] == "keep"
    model = build_model(SPEC, CLASSES, SHAPE).double().eval()
    a = state(here, "v1")
    shapes = [(n, p.shape) for n, p in model.named_parameters()]
    data = torch.load("train.pt")

    def loss(v):
        parts, i = {}, 0
        for n, shape in shapes:
            parts[n] = v[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return nn.functional.cross_entropy(functional_call(model, parts, (data["x"].double(),)), data["y"])

    flat = torch.cat([a[n].reshape(-1) for n, _ in shapes])
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
        op = LinearOperator((flat.numel(),) * 2, dtype=np.float64, matvec=lambda v: torch.autograd.functional.hvp(
            loss, flat, torch.from_numpy(np.ascontiguousarray(v).reshape(-1)))[1].numpy())
        exact = np.sort(eigsh(op, k=2, which="LA", tol=1e-10)[0])[::-1]
    assert exact[0] > 1.2 * exact[1] > 0  # a clear top: Lanczos converges on it
    np.testing.assert_allclose(res["eigenvalues"], exact, rtol=1e-4)
    assert res["loss"] == pytest.approx(reference(here, a, "train")[0], rel=1e-5)


def test_connect_trains_a_bezier_curve_between_the_two_snapshots(here):
    res = run("connect", "v1.pt", "v2.pt", "--epochs", "2", "--num", "5", "--train-batch-size", "8", "--out", "s",
              "--overwrite", *here[1])
    assert res["bn_mode"] == "keep" and len(res["history"]) == 2 and np.all(np.isfinite(res["history"]))
    assert res["bend"] == "s:connect-bend"
    with Store("s", mode="r") as st:
        model = build_model(SPEC, CLASSES, SHAPE)
        st.read_snapshot("connect-bend").load_into(model)
    a, b, bend = state(here, "v1"), state(here, "v2"), {k: v.double() for k, v in model.state_dict().items()}
    assert any(not torch.allclose(bend[k], (a[k] + b[k]) / 2) for k in a)  # trained off the line's midpoint
    for i, t in enumerate(res["alphas"]):  # φ(t) = (1−t)²·A + 2t(1−t)·θ + t²·B
        check_point(here, res, i, mix(((1 - t) ** 2, a), (2 * t * (1 - t), bend), (t ** 2, b)))
    line = {k[len("line_"):]: v for k, v in res.items() if k.startswith("line_") and k != "line_barriers"}
    check_point(here, line, 1, mix((0.75, a), (0.25, b)))  # the straight line it is compared with


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_the_aligned_vit_computes_the_same_function_closer_to_the_target(here, method):
    res = run("align", "v1.pt", "v2.pt", "--method", method, "--model", SPEC, "--data", "tensors:train.pt",
              "--out", "s", "--name", f"al-{method}", "--overwrite", "--quiet")
    assert res["moved_units"] > 0 and res["snapshot"] == f"s:al-{method}"
    if method == "activation":  # heads are matched by their weights only: left in place here
        assert res["left_in_place"] == ["blocks.0.attn:heads"]
    with Store("s", mode="r") as st:
        snap = st.read_snapshot(f"al-{method}")
    model = build_model(SPEC, CLASSES, SHAPE)
    snap.load_into(model)
    aligned = {k: v.double() for k, v in model.state_dict().items()}
    a, b = state(here, "v1"), state(here, "v2")
    x = torch.load("train.pt")["x"].double()
    outs = []
    for st in (b, aligned):
        m = build_model(SPEC, CLASSES, SHAPE).double().eval()
        m.load_state_dict(st)
        with torch.no_grad():
            outs.append(m(x))
    assert float((outs[0] - outs[1]).abs().max()) <= 1e-5 * max(1.0, float(outs[0].abs().max()))
    assert any(not torch.equal(aligned[k], b[k]) for k in b)  # units did move
    dist = lambda s, t: float(torch.cat([(s[k] - t[k]).reshape(-1) for k in s]).norm())
    assert res["distance_before"] == pytest.approx(dist(a, b), rel=1e-5)
    assert res["distance_after"] == pytest.approx(dist(a, aligned), rel=1e-5)
    if method == "weight":  # the matching can only bring B closer to A
        assert res["distance_after"] < res["distance_before"]
        # --align on a barrier matrix aligns the same way: its entry is the line to the aligned snapshot's
        mat = run("barriers", "v1.pt", "v2.pt", "--num", "5", "--align", "weight", *here[1])
        line = run("interpolate", "v1.pt", "s:al-weight", "--num", "5", *here[1])
        assert mat["train_loss_barrier"][0][1] == pytest.approx(line["barriers"]["train_loss"]["barrier"], rel=1e-6)
        check_point(here, line, 4, b)  # its far end is B's function


def planted(st: dict, heads: list[int], units: list[int]) -> dict[str, torch.Tensor]:
    """`st` with its attention heads and MLP hidden units reordered (the same function): heads as
    blocks of rows of each of q, k and v in in_proj and of columns of out_proj; units as rows of the
    MLP's first layer and columns of its second."""
    out = dict(st)
    d = st["blocks.0.attn.out_proj.weight"].shape[0]
    hd = d // len(heads)
    rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])
    qkv = torch.cat([rows + i * d for i in range(3)])
    out["blocks.0.attn.in_proj_weight"] = st["blocks.0.attn.in_proj_weight"][qkv]
    out["blocks.0.attn.in_proj_bias"] = st["blocks.0.attn.in_proj_bias"][qkv]
    out["blocks.0.attn.out_proj.weight"] = st["blocks.0.attn.out_proj.weight"][:, rows]
    out["blocks.0.mlp.0.weight"] = st["blocks.0.mlp.0.weight"][units]
    out["blocks.0.mlp.0.bias"] = st["blocks.0.mlp.0.bias"][units]
    out["blocks.0.mlp.2.weight"] = st["blocks.0.mlp.2.weight"][:, units]
    return out


def test_a_planted_permutation_of_heads_and_units_is_undone(here):
    a = state(here, "v1")
    units = torch.randperm(a["blocks.0.mlp.0.bias"].numel(), generator=torch.Generator().manual_seed(3)).tolist()
    p = planted(a, [1, 0], units)
    assert any(not torch.equal(p[k], a[k]) for k in a)
    torch.save({k: v.float() for k, v in p.items()}, "planted.pt")
    check_point(here, run("interpolate", "v1.pt", "planted.pt", "--num", "2", *here[1]), 1, a)  # same function
    run("align", "v1.pt", "planted.pt", "--method", "weight", "--model", SPEC, "--data", "tensors:train.pt",
        "--out", "s", "--name", "undone", "--overwrite", "--quiet")
    line = run("interpolate", "v1.pt", "s:undone", "--num", "3", *here[1])
    for i in range(3):  # the aligned snapshot is v1 again: a line of one point
        check_point(here, line, i, a)
    res = run("align", "v1.pt", "planted.pt", "--method", "activation", "--model", SPEC, "--data",
              "tensors:train.pt", "--out", "s", "--name", "undone-act", "--overwrite", "--quiet")
    assert res["left_in_place"] == ["blocks.0.attn:heads"]
    with Store("s", mode="r") as st:
        model = build_model(SPEC, CLASSES, SHAPE)
        st.read_snapshot("undone-act").load_into(model)
    got = model.state_dict()
    for k in a:  # the MLP's units back in v1's order, the heads still in the planted one
        want = a[k] if "mlp" in k or "attn" not in k else p[k]
        torch.testing.assert_close(got[k].double(), want, rtol=0, atol=1e-6, msg=k)


# ----------------------------------------------------------------------------------------------
# a study

TINY = "vit:patch=4,dim=8,depth=1,heads=2"
# experiments/configs/vit_demo.toml cut down to seconds: its recipe (AdamW + warmup in pre-training,
# fine-tuning and from scratch) and its methods, on tiny.toml's toy problem, one cell per grid; the
# Hessians and trained curves are left to the commands' own tests above
TINY_STUDY = ["study.seeds=[0]", "study.members=2", "data.image_size=8", "data.parts=6", "data.part_size=3",
              "data.parts_per_image=2", "data.source_classes=8", "data.source_train=160", "data.source_test=40",
              "data.target_classes=4", "data.target_train_per_class=6", "data.target_test=80", "data.target_val=40",
              "data.noise=0.8", "data.augment_shift=1", f'model.name="{TINY}"', "pretrain.epochs=2",
              "pretrain.warmup_epochs=0.5", "finetune.epochs=3", "finetune.warmup_epochs=1", "finetune.batch_size=8",
              "scratch.epochs=3", "methods.sse.lr_scale=8.0", "methods.starsse.lr_scale=8.0",
              "methods.fge_garipov.cycle_epochs=1", "methods.swa.epochs=2", "analysis.line_points=3",
              "analysis.pairwise_points=3", "analysis.plane_points=3", "analysis.train_samples=24",
              "analysis.test_samples=80", "analysis.bn_samples=24", "analysis.sharpness=false", "analysis.curves=false",
              "analysis.report_html=false"]


def test_a_tiny_vit_study_with_adamw_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    summary = run("run", "vit_demo", "--out", str(out), "--quiet", "--no-cache",
                  *[a for s in TINY_STUDY for a in ("--set", s)])
    study = summary["study"]
    assert study["model"]["name"] == TINY
    assert study["finetune"]["optimizer"] == "adamw" and study["finetune"]["warmup_epochs"] == 1
    assert set(summary["methods"]) == {"local_de", "global_de", "sse", "starsse", "fge_garipov", "fge_cyclic", "swa"}
    assert "AdamW" in (out / "report.md").read_text() and (out / "summary.json").is_file()
    assert {f["id"] for f in summary["findings"]} >= {"transfer", "basins", "semi_vs_local", "gap"}
    assert all(f["test"] and f["verdict"] in ("holds", "does not hold", "inconclusive") for f in summary["findings"])
    # the study's fine-tuned ViTs, run here in fp64 on the target test split it wrote out
    data = torch.load(out / "data" / "test.pt")
    members = summary["seeds"]["0"]["methods"]["local_de"]["members"]
    with Store(str(out / "results"), "r") as st:
        line = st.read("curves", f"line-{members[0]}-{members[1]}")
        logits = st.read("predictions", members[0])["logits"]
        snaps = [st.read_snapshot(m) for m in members[:2]]
        # Garipov's FGE carries its optimizer from segment to segment: AdamW's moments are stored
        fge = [k.split("/")[1] for k in st.read("snapshots", "fge_garipov-1").arrays if k.startswith("optimizer/")]
    assert set(fge) == {"exp_avg", "exp_avg_sq", "step"}
    outs = []
    for snap in snaps:
        m = build_model(TINY, 4, (3, 8, 8))
        snap.load_into(m)
        with torch.no_grad():
            outs.append(m.double().eval()(data["x"].double()))
    np.testing.assert_allclose(logits, outs[0].numpy(), rtol=1e-4, atol=1e-5)
    for end, o in ((0, outs[0]), (-1, outs[1])):  # the line's ends are the two members (no BN to recompute)
        assert line["test_loss"][end] == pytest.approx(nn.functional.cross_entropy(o, data["y"]).item(), rel=1e-5)
