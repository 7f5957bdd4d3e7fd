"""The geometry layer: where weight points lie, computed without evaluating any of them.

Coordinate ranges (`ranges`), directions (random, filter/layer-normalised, PCA, through
snapshots, projection), lines and barriers (`lines`), planes (`planes`), the parametrisation
and training of curved paths (`curves`), and the permutation symmetry of hidden units: its
structure traced from the model (`permutations`) and weight matching (`matching`).

May import: `landscape.core` and this folder (never evaluate, store, analyses or the interface).
"""
