"""The store layer: a folder of one HDF5 file per result, and how results get there.

`store` (the folder, its lock, its guarantees, resume-or-refuse), `grid` (a grid of points being
computed, saved through a callback the store gives it), `atomic` (write under a temporary name,
sync, rename) and `refs` (`STORE:NAME` snapshot references).

May import: `landscape.core` and this folder (never geometry, evaluate, analyses or the interface).
"""
