"""The core layer: what every analysis stands on and nothing above it.

Errors and argument checks, JSON conversion, flat parameter vectors and their layout, affine
families of weight points, checkpoints and snapshots, BatchNorm handling, data specs, model specs,
the one `module:callable` loader, losses (`--loss`), allocator tuning, torchrun ranks (`distributed`)
and the local ranks `--procs` starts (`local_ranks`).

May import: torch, numpy and the other modules of this folder only (never geometry, evaluate,
store, analyses or the interface).
"""
