"""The geometry layer: where weight points lie, computed without evaluating any of them.

Coordinate ranges (`ranges`), directions (random, filter/layer-normalised, PCA, through
snapshots, projection), lines and barriers (`lines`), planes (`planes`) and the parametrisation
and training of curved paths (`curves`).

May import: `landscape.core` and this folder (never evaluate, store, analyses or the interface).
"""
