"""Trajectories recorded from one's own loop, from PyTorch Lightning and from the Hugging Face
Trainer: each stored point holds exactly the weights the training had at that step (checked
against copies an independent callback takes), and a PCA plane through the path projects every
point where an fp64 numpy PCA puts it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import landscape
from landscape.core.errors import LandscapeError
from landscape.store.store import Store


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def problem(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def flat(state) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked"))])


def stored_params(store, names):
    with Store(str(store)) as st:
        return [st.read_snapshot(n) for n in names]


def test_a_loop_records_every_nth_step_and_the_pca_plane_follows_the_path(tmp_path):
    torch.manual_seed(0)
    model, (x, y) = mlp(), problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    traj = landscape.Trajectory(tmp_path / "s", "sgd", every=3)
    copies = {}
    for step in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if traj(model, step=step, epoch=step // 5) is not None:
            copies[step] = flat(model.state_dict()).clone()
    assert sorted(copies) == [0, 3, 6, 9]
    points = traj.points()
    assert [p["step"] for p in points] == [0, 3, 6, 9] and [p["index"] for p in points] == [0, 1, 2, 3]
    assert [p["epoch"] for p in points] == [0, 0, 1, 1]
    for snap, step in zip(stored_params(tmp_path / "s", [p["name"] for p in points]), [0, 3, 6, 9]):
        assert torch.equal(snap.params, copies[step]) and snap.meta["step"] == step

    refs = traj.refs()
    res = landscape.plane(refs[-1], pca=refs, model=mlp(), data=(x, y), x="-1:1:3", y="-1:1:3")
    # independent PCA: fp64 SVD of the points minus the last one (the plane's centre)
    pts = torch.stack([copies[s] for s in (0, 3, 6, 9)]).double().numpy()
    m = pts - pts[-1]
    _, _, vt = np.linalg.svd(m, full_matrices=False)
    want = m @ vt[:2].T
    assert res.projections[0].name == refs[-1]  # the centre first, then the path in order
    got = res.projection_coords[1:5]
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-4, atol=1e-6)


def test_a_step_recorded_twice_is_refused_and_a_new_recorder_appends(tmp_path):
    model = mlp()
    traj = landscape.Trajectory(tmp_path / "s", "t")
    traj(model, step=0)
    with pytest.raises(LandscapeError, match="already holds step 0"):
        traj(model, step=0)
    again = landscape.Trajectory(tmp_path / "s", "t")  # a resumed training run
    again(model, step=1)
    assert [p["index"] for p in again.points()] == [0, 1]
    with pytest.raises(LandscapeError, match="non-negative integer"):
        again(model, step=-1)


def test_the_lightning_callback_records_every_epoch(tmp_path):
    pl = pytest.importorskip("lightning.pytorch", reason="PyTorch Lightning is a test extra: pip install -e .[test]")
    from landscape.callbacks import LightningTrajectory

    x, y = problem()
    copies = []

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = mlp()

        def training_step(self, batch, _):
            xb, yb = batch
            return nn.functional.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.3)

    class Copy(pl.Callback):  # the independent reference: the weights at each epoch's end
        def on_train_epoch_end(self, trainer, module):
            copies.append((trainer.global_step, flat(module.model.state_dict()).clone()))

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[LightningTrajectory(str(tmp_path / "s"), "pl", attr="model"), Copy()])
    trainer.fit(Module(), loader)
    points = landscape.Trajectory(tmp_path / "s", "pl").points()
    assert [p["step"] for p in points] == [c[0] for c in copies] == [4, 8, 12]
    assert [p["epoch"] for p in points] == [0, 1, 2]
    for snap, (_, want) in zip(stored_params(tmp_path / "s", [p["name"] for p in points]), copies):
        assert torch.equal(snap.params, want)
    # the recorded network is the user's own: analyses take it as the model
    line = landscape.interpolate(*landscape.Trajectory(tmp_path / "s", "pl").refs()[:2], model=mlp(), data=(x, y),
                                 num=3)
    assert line.train_loss.shape == (3,)


def test_the_hugging_face_callback_records_every_epoch(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e .[test]")
    from landscape.callbacks import HFTrajectory

    x, y = problem()
    copies = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x, labels=None):
            logits = self.net(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    class Copy(transformers.TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, **kw):
            copies.append((state.global_step, flat(model.state_dict()).clone()))

    torch.manual_seed(0)
    data = [{"x": x[i], "labels": y[i]} for i in range(len(y))]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=2,
                                          per_device_train_batch_size=10, learning_rate=0.1, report_to=[],
                                          save_strategy="no", logging_strategy="no", disable_tqdm=True,
                                          use_cpu=True)
    trainer = transformers.Trainer(model=Net(), args=args, train_dataset=data,
                                   callbacks=[HFTrajectory(str(tmp_path / "s"), "hf"), Copy()])
    trainer.train()
    points = landscape.Trajectory(tmp_path / "s", "hf").points()
    assert [p["step"] for p in points] == [c[0] for c in copies] == [4, 8]
    for snap, (_, want) in zip(stored_params(tmp_path / "s", [p["name"] for p in points]), copies):
        assert torch.equal(snap.params, want)
