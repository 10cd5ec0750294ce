"""Per-head POS probes: training pipeline, evaluation, the safe store and the loaded run.

`ProbeRun` (store.py) is what `runtime.probes` holds; `train_probe_run` (pipeline.py) makes
runs; `attach_probes` (loader.py) picks and verifies one at startup. sklearn is imported only
by the sklearn baseline.
"""

from headscope.analysis.probes.loader import attach_probes
from headscope.analysis.probes.pipeline import TrainConfig, TrainedRun, train_probe_run
from headscope.analysis.probes.store import ProbeRun, ProbeRunError, list_runs, load_probe_run
from headscope.model.probe_features import VECTORS

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
