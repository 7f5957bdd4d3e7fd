"""The analyses layer: one module per kind of stored result.

`grids` (lines, barrier matrices and planes: one compute path for one process and many ranks),
`ensemble`, `hessian`, `connect` and `align` (aligned snapshots). Each owns its result's whole life: the config a stored result
must match, resume or refusal (through `Store.resume_or_refuse`), the computation and the one write.

May import: `landscape.core`, `landscape.geometry`, `landscape.evaluate`, `landscape.store` and this
folder (never the interface: api, cli, plots, exports).
"""
