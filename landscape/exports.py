"""Stored curves and surfaces in the formats other tools read.

- `goldstein`: an HDF5 file as Goldstein et al.'s loss-landscape scripts write and read it
  (plot_2D.py, plot_1D.py, h52vtp.py): datasets at the file root, `xcoordinates` (and
  `ycoordinates`), metric arrays in `meshgrid(x, y)` order, i.e. shape [len(y), len(x)] with
  Z[j, i] the value at (x_i, y_j); accuracies in percent. A curve's `alphas` become its
  `xcoordinates`.
- `vtp`: a VTK XML PolyData file for ParaView: the surface as a height field (z = the chosen
  metric, optionally log), every metric as point data, quads only where all four corners are
  finite, and a `nonfinite` point array for diverged points.
- `csv`: one row per point: coordinates, then every metric (accuracies as fractions).

The toolkit's own layout (surfaces indexed [x, y], fractions) is unchanged; these are copies.
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from landscape.core.errors import LandscapeError
from landscape.store.atomic import write_atomically
from landscape.store.outputs import check_output_file
from landscape.store.store import Store, write_hdf5_file

FORMATS = ("goldstein", "vtp", "csv")
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def _load(store_path: str, name: str) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    with Store(store_path, "r") as store:
        kind = next((k for k in ("surfaces", "curves") if store.has(k, name)), None)
        if kind is None:
            raise LandscapeError(f"store {store_path!r} has no curve or surface named {name!r} "
                                 f"(surfaces: {', '.join(store.names('surfaces')) or 'none'}; "
                                 f"curves: {', '.join(store.names('curves')) or 'none'})")
        obj = store.read(kind, name)
    _check_arrays(kind, name, obj.arrays)
    return kind, obj.arrays, obj.attrs


def _check_arrays(kind: str, name: str, data: dict[str, np.ndarray]) -> None:
    """Refuse, in one line, a stored curve or surface whose arrays do not fit together."""
    what = f"{kind[:-1]} {name!r} is malformed"
    axes = ("alphas",) if kind == "curves" else ("xcoordinates", "ycoordinates")
    shape = []
    for axis in axes:
        if axis not in data:
            raise LandscapeError(f"{what}: it has no {axis}")
        values = np.asarray(data[axis])
        if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "fiu":
            raise LandscapeError(f"{what}: {axis} is not a non-empty vector of numbers "
                                 f"(shape {list(values.shape)}, dtype {values.dtype})")
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise LandscapeError(f"{what}: {axis} holds non-finite values")
        if values.size > 1 and not (np.diff(values) > 0).all():
            raise LandscapeError(f"{what}: {axis} is not strictly increasing")
        shape.append(values.size)
    metrics = [m for m in METRICS if m in data]
    if not metrics:
        raise LandscapeError(f"{what}: it holds none of {', '.join(METRICS)}")
    for m in metrics + [k for k in ("done", "nonfinite") if k in data]:
        values = np.asarray(data[m])
        if values.shape != tuple(shape):
            raise LandscapeError(f"{what}: {m} has shape {list(values.shape)}, its coordinates give {shape}")
        if values.dtype.kind not in ("b" if m in ("done", "nonfinite") else "fiu"):
            raise LandscapeError(f"{what}: {m} is of dtype {values.dtype}")


def export(store_path: str, name: str, fmt: str, out: str, *, metric: str | None = None,
           log: bool = False) -> dict[str, Any]:
    """Write stored curve or surface `name` to `out` in format `fmt` (see the module docstring)."""
    if fmt not in FORMATS:
        raise LandscapeError(f"unknown export format {fmt!r}: choose {', '.join(FORMATS)}")
    out = check_output_file(out, "--output")
    kind, data, attrs = _load(store_path, name)
    metrics = [m for m in METRICS if m in data]
    if fmt == "goldstein":
        write_hdf5_file(out, *goldstein_arrays(kind, data, metrics, attrs))
    elif fmt == "csv":
        text = csv_text(kind, data, metrics)
        write_atomically(out, lambda f: f.write(text.encode()))
    else:
        if kind != "surfaces":
            raise LandscapeError(f"{name!r} is a curve: the vtp format is for surfaces (use goldstein or csv)")
        metric = metric or next(m for m in ("test_loss", "train_loss") if m in data)
        if metric not in metrics:
            raise LandscapeError(f"surface {name!r} has no metric {metric!r}: choose {', '.join(metrics)}")
        text = vtp_text(data, metrics, metric, log)
        write_atomically(out, lambda f: f.write(text.encode()))
    return {"kind": kind[:-1], "name": name, "format": fmt, "file": os.path.abspath(out)}


def goldstein_arrays(kind: str, data: dict[str, np.ndarray], metrics: list[str],
                     attrs: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    if kind == "curves":
        arrays["xcoordinates"] = np.asarray(data["alphas"], dtype=np.float64)
    else:
        arrays["xcoordinates"] = np.asarray(data["xcoordinates"], dtype=np.float64)
        arrays["ycoordinates"] = np.asarray(data["ycoordinates"], dtype=np.float64)
    for m in metrics:
        values = np.asarray(data[m], dtype=np.float64)
        if m.endswith("_acc"):
            values = 100.0 * values
        arrays[m] = values.T if values.ndim == 2 else values  # [x, y] -> meshgrid(x, y) order [y, x]
    keep = {k: attrs[k] for k in ("bn_mode", "kind", "unit", "center", "a", "b") if k in attrs}
    return arrays, {**keep, "exported_from": "landscape", "accuracy_unit": "percent"}


def csv_text(kind: str, data: dict[str, np.ndarray], metrics: list[str]) -> str:
    buf = io.StringIO()
    if kind == "curves":
        buf.write(",".join(["alpha", *metrics]) + "\n")
        for i, a in enumerate(np.asarray(data["alphas"])):
            buf.write(",".join([repr(float(a)), *(repr(float(data[m][i])) for m in metrics)]) + "\n")
    else:
        buf.write(",".join(["x", "y", *metrics]) + "\n")
        for i, x in enumerate(np.asarray(data["xcoordinates"])):
            for j, y in enumerate(np.asarray(data["ycoordinates"])):
                buf.write(",".join([repr(float(x)), repr(float(y)),
                                    *(repr(float(data[m][i, j])) for m in metrics)]) + "\n")
    return buf.getvalue()


def _ascii(values: np.ndarray, fmt: str = "{:.9g}") -> str:
    return " ".join(fmt.format(v) for v in np.asarray(values).reshape(-1))


def vtp_text(data: dict[str, np.ndarray], metrics: list[str], metric: str, log: bool) -> str:
    """The surface as VTK XML PolyData (ASCII). Points in meshgrid(x, y) order, as h52vtp writes."""
    xs, ys = np.asarray(data["xcoordinates"], float), np.asarray(data["ycoordinates"], float)
    nx, ny = len(xs), len(ys)
    gx, gy = np.meshgrid(xs, ys)  # [ny, nx]
    z = np.asarray(data[metric], float).T  # [ny, nx]
    finite = np.isfinite(z)
    if log:
        finite &= z > 0
        z = np.where(finite, np.log(np.where(finite, z, 1.0)), np.nan)
    if not finite.any():
        raise LandscapeError(f"nothing to export: every point of {metric} is non-finite")
    height = np.where(finite, z, np.nanmax(np.where(finite, z, np.nan)))  # a diverged point sits at the top
    points = np.stack([gx.ravel(), gy.ravel(), height.ravel()], 1)
    quads = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            k = j * nx + i
            corners = [k, k + 1, k + nx + 1, k + nx]
            if finite.ravel()[corners].all():
                quads.append(corners)
    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    n = len(points)
    point_data = [f'        <DataArray type="Float64" Name="{m}" format="ascii">\n          '
                  f'{_ascii(np.asarray(data[m], float).T)}\n        </DataArray>\n' for m in metrics]
    point_data.append('        <DataArray type="UInt8" Name="nonfinite" format="ascii">\n          '
                      f'{_ascii((~finite).astype(int), "{:d}")}\n        </DataArray>\n')
    return ('<?xml version="1.0"?>\n'
            '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
            '  <PolyData>\n'
            f'    <Piece NumberOfPoints="{n}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" '
            f'NumberOfPolys="{len(quads)}">\n'
            f'      <PointData Scalars="{metric}">\n' + "".join(point_data) + '      </PointData>\n'
            '      <Points>\n'
            '        <DataArray type="Float64" Name="Points" NumberOfComponents="3" format="ascii">\n'
            f'          {_ascii(points)}\n        </DataArray>\n      </Points>\n'
            '      <Polys>\n'
            '        <DataArray type="Int64" Name="connectivity" format="ascii">\n'
            f'          {_ascii(quads, "{:d}")}\n        </DataArray>\n'
            '        <DataArray type="Int64" Name="offsets" format="ascii">\n'
            f'          {_ascii(4 * np.arange(1, len(quads) + 1), "{:d}")}\n        </DataArray>\n'
            '      </Polys>\n'
            '    </Piece>\n  </PolyData>\n</VTKFile>\n')
