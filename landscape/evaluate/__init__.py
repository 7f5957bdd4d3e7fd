"""The evaluation layer: metrics of weight points on data.

The evaluation engine (`engine`: one loop for every grid, with its data and BN inputs), the
batched K-points path through the fused kernels (`batched`), ensemble metrics (`ensembles`) and
Hessian spectra (`hessian`: the Hessian-vector operator, Lanczos, trace, density).

May import: `landscape.core`, `landscape.geometry`, `landscape_kernels` and this folder (never store,
analyses or the interface).
"""
