"""Per-head POS probes: training pipeline, evaluation, the safe store and the loaded run.

`ProbeRun` (store.py) is what `runtime.probes` holds; `train_probe_run` (pipeline.py) makes
runs; `attach_probes` (loader.py) picks and verifies one at startup. sklearn is imported only
by the sklearn baseline.
"""

from headscope.runtime.probes.features import VECTORS
from headscope.runtime.probes.loader import attach_probes
from headscope.runtime.probes.pipeline import TrainConfig, TrainedRun, train_probe_run
from headscope.runtime.probes.store import ProbeRun, ProbeRunError, list_runs, load_probe_run

__all__ = [
    "VECTORS",
    "ProbeRun",
    "ProbeRunError",
    "TrainConfig",
    "TrainedRun",
    "attach_probes",
    "list_runs",
    "load_probe_run",
    "train_probe_run",
]
