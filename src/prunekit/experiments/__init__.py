"""Experiments: typed runs, their one lifecycle and its backends, sweeps, the results database, ablations.

    run = resolve(RunSpec("lenet5", "fashion-mnist", "snip", 0.98))   # a TrainingRun, validated, keyed
    outcome = run_one(run, "runs")                                      # claimed, trained, recorded
    summary = run_sweep(load_sweep_file("sweep.toml"), "runs")          # a grid, resumable
"""

from .ablations import reinit_seed, shuffle_masks
from .db import ResultsDB, RunRecord
from .kinds import DENSE, IMP, DatasetCache, ImpRun, Run, RunContext, StructuredRun, TrainingRun, run_key
from .lifecycle import Lifecycle, RunOutcome
from .run import run_one
from .spec import (
    ABLATIONS,
    RunSpec,
    SweepSpec,
    from_config,
    load_sweep_file,
    resolve,
    sweep_from_mapping,
)
from .sweep import SweepSummary, run_sweep

__all__ = [
    "ABLATIONS", "DENSE", "IMP", "DatasetCache", "ImpRun", "Lifecycle", "ResultsDB", "Run", "RunContext", "RunOutcome", "RunRecord",
    "RunSpec", "StructuredRun", "SweepSpec", "SweepSummary", "TrainingRun", "from_config", "load_sweep_file", "reinit_seed",
    "resolve", "run_key", "run_one", "run_sweep", "shuffle_masks", "sweep_from_mapping",
]
