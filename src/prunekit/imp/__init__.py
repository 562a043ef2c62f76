"""Iterative magnitude pruning with rewinding (lottery tickets) and iterative rewind pruning (IRP, AutoSparse's
teacher): the oracle row of the tables and the source of masks a score network learns from."""

from .rounds import IRP_SCHEDULES, ImpOptions, imp_densities, run_imp

__all__ = ["IRP_SCHEDULES", "ImpOptions", "imp_densities", "run_imp"]
