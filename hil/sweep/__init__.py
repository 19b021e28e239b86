"""Parameter and Monte Carlo sweeps on dask.distributed (`hil sweep`): a TOML spec
(`spec`), one task per point on a worker (`point`), the engine that streams results into a
resumable table (`engine`, `table`) and the figures drawn from it (`plot`). Targets are reached
by name through `hil.registry.sweep_target`; this package never imports a paper's package."""
from hil.sweep.engine import SweepOutcome, run_sweep
from hil.sweep.spec import SweepSpec, load_spec, parse_spec
from hil.sweep.table import SweepTable

__all__ = ["SweepOutcome", "SweepSpec", "SweepTable", "load_spec", "parse_spec", "run_sweep"]
