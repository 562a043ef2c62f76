"""Experiments: runs, sweeps, the results database, ablations, IMP."""

from .ablations import reinit_seed, shuffle_masks
from .config import (
    ABLATIONS,
    DENSE,
    IMP,
    ImpOptions,
    ResolvedRun,
    RunSpec,
    SweepSpec,
    load_sweep_file,
    resolve,
    run_key,
    sweep_from_mapping,
)
from .db import ResultsDB
from .execute import DatasetCache
from .imp import imp_densities, run_imp
from .run import RunOutcome, run_one
from .sweep import SweepSummary, run_sweep

__all__ = [
    "ABLATIONS", "DENSE", "IMP", "DatasetCache", "ImpOptions", "ResolvedRun", "ResultsDB", "RunOutcome", "RunSpec", "SweepSpec",
    "SweepSummary", "imp_densities", "load_sweep_file", "reinit_seed", "resolve", "run_imp", "run_key", "run_one",
    "run_sweep", "shuffle_masks", "sweep_from_mapping",
]
