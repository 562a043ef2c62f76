"""The run kinds: each a typed description with its own executor (one file per kind)."""

from .base import DENSE, IMP, DatasetCache, Executed, Run, RunContext, run_key
from .imp import ImpRun
from .structured import StructuredRun, measure_latency
from .training import TrainingRun

__all__ = ["DENSE", "IMP", "DatasetCache", "Executed", "ImpRun", "Run", "RunContext", "StructuredRun", "TrainingRun", "measure_latency", "run_key"]
