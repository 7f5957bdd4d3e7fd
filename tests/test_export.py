"""`landscape export`: Goldstein's HDF5 layout read by his own reading code (quoted below), a VTK
PolyData file read by VTK's own XML reader, and CSV read back with numpy."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import landscape
from landscape.cli import main
from landscape.core.data import TensorData


# --- Goldstein et al., loss-landscape (MIT licence): how plot_2D.py, plot_1D.py, scheduler.py
# --- and h52vtp.py read a surface file, quoted with only the plotting calls left out.
def goldstein_plot_2d_read(surf_file, surf_name="train_loss"):
    f = h5py.File(surf_file, 'r')
    x = np.array(f['xcoordinates'][:])
    y = np.array(f['ycoordinates'][:])
    X, Y = np.meshgrid(x, y)
    Z = np.array(f[surf_name][:])
    f.close()
    return X, Y, Z


def goldstein_h52vtp_read(surf_file, surf_name="train_loss"):
    f = h5py.File(surf_file, 'r')
    [xcoordinates, ycoordinates] = np.meshgrid(f['xcoordinates'][:], f['ycoordinates'][:][:])
    vals = f[surf_name]
    x_array = xcoordinates[:].ravel()
    y_array = ycoordinates[:].ravel()
    z_array = vals[:].ravel()
    return x_array, y_array, z_array


def goldstein_plot_1d_read(surf_file):
    f = h5py.File(surf_file, 'r')
    x = f['xcoordinates'][:]
    assert 'train_loss' in f.keys(), "'train_loss' does not exist"
    return x, f['train_loss'][:], f['train_acc'][:], f['test_loss'][:], f['test_acc'][:]
# --- end of quote


def make_model():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    g = torch.Generator().manual_seed(0)
    train = TensorData(torch.randn(40, 2, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g), "train")
    test = TensorData(torch.randn(20, 2, 4, 4, generator=g), torch.randint(0, 3, (20,), generator=g), "test")
    torch.manual_seed(0)
    a, b = (landscape.Snapshot.from_model(make_model(), n) for n in "ab")
    out = str(d / "st")
    # an asymmetric grid: 5 values of x, 3 of y, so a transposed read cannot pass
    landscape.plane(a, random="filter", model=make_model(), data=train, test_data=test, x=np.linspace(-1, 1, 5),
                    y=np.array([-0.5, 0.0, 2.0]), out=out, name="plane", device="cpu")
    landscape.interpolate(a, b, model=make_model(), data=train, test_data=test, num=5, out=out, name="line",
                          device="cpu")
    return d, out


def test_goldstein_surface_reads_with_his_code(store, capsys):
    d, out = store
    assert main(["export", out, "plane", "--format", "goldstein", "-o", str(d / "plane_g.h5")]) == 0
    ours = landscape.store.store.Store(out).read("surfaces", "plane")
    X, Y, Z = goldstein_plot_2d_read(str(d / "plane_g.h5"), "train_loss")
    assert X.shape == Z.shape == (3, 5)  # contour(X, Y, Z) needs equal shapes
    for j in range(3):
        for i in range(5):
            assert X[j, i] == ours["xcoordinates"][i] and Y[j, i] == ours["ycoordinates"][j]
            assert Z[j, i] == ours["train_loss"][i, j]
    _, _, acc = goldstein_plot_2d_read(str(d / "plane_g.h5"), "test_acc")
    np.testing.assert_allclose(acc, 100 * ours["test_acc"].T)  # percent
    xs, ys, zs = goldstein_h52vtp_read(str(d / "plane_g.h5"), "test_loss")
    for x, y, z in zip(xs, ys, zs):  # every (x, y, z) triple is the value at that point
        i, j = list(ours["xcoordinates"]).index(x), list(ours["ycoordinates"]).index(y)
        assert z == ours["test_loss"][i, j]


def test_goldstein_curve_reads_with_his_code(store):
    d, out = store
    landscape.export(out, "line", "goldstein", str(d / "line_g.h5"))
    ours = landscape.store.store.Store(out).read("curves", "line")
    x, tr_loss, tr_acc, te_loss, te_acc = goldstein_plot_1d_read(str(d / "line_g.h5"))
    np.testing.assert_array_equal(x, ours["alphas"])
    np.testing.assert_array_equal(tr_loss, ours["train_loss"])
    np.testing.assert_allclose(te_acc, 100 * ours["test_acc"])


def test_vtp_is_valid_polydata(store):
    d, out = store
    path = str(d / "plane.vtp")
    landscape.export(out, "plane", "vtp", path, metric="test_loss")
    ours = landscape.store.store.Store(out).read("surfaces", "plane")
    root = ET.parse(path).getroot()
    piece = root.find("PolyData/Piece")
    assert int(piece.get("NumberOfPoints")) == 15 and int(piece.get("NumberOfPolys")) == 4 * 2
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(path)
    reader.Update()
    poly = reader.GetOutput()
    assert reader.GetErrorCode() == 0 and poly.GetNumberOfPoints() == 15 and poly.GetNumberOfPolys() == 8
    pts = vtk_to_numpy(poly.GetPoints().GetData())
    loss = vtk_to_numpy(poly.GetPointData().GetArray("test_loss"))
    for (x, y, z), value in zip(pts, loss):
        i, j = list(ours["xcoordinates"]).index(x), list(ours["ycoordinates"]).index(y)
        assert z == pytest.approx(ours["test_loss"][i, j]) and value == pytest.approx(ours["test_loss"][i, j])


def test_csv_and_bad_requests(store, capsys):
    d, out = store
    landscape.export(out, "plane", "csv", str(d / "plane.csv"))
    table = np.genfromtxt(d / "plane.csv", delimiter=",", names=True)
    ours = landscape.store.store.Store(out).read("surfaces", "plane")
    assert len(table) == 15
    row = table[(table["x"] == ours["xcoordinates"][4]) & (table["y"] == ours["ycoordinates"][0])]
    assert row["test_acc"][0] == ours["test_acc"][4, 0]
    for argv, needle in ((["export", out, "nope", "--format", "csv", "-o", str(d / "x.csv")], "no curve or surface"),
                         (["export", out, "line", "--format", "vtp", "-o", str(d / "x.vtp")], "is a curve"),
                         (["export", out, "plane", "--format", "vtp", "--metric", "zzz", "-o", str(d / "x.vtp")],
                          "choose train_loss"),
                         (["export", out, "plane", "--format", "csv", "-o", str(d / "nowhere" / "x.csv")],
                          "does not exist")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]
