"""Experiments: the comparison behind ``sdecor compare`` and the SaliencyDecor design sweep.

* :mod:`sdecor.experiments.runner`: one train-and-evaluate run, summaries and tables;
* :mod:`sdecor.experiments.compare`: :func:`compare`, every method x seed, results.json + figures;
* :mod:`sdecor.experiments.figures`: the PNG figures;
* :mod:`sdecor.experiments.sweep`: the design sweep (``python -m sdecor.experiments.sweep``).
"""

from .compare import DEFAULTS, compare
from .runner import METRICS, SCORE_DIRECTIONS, EvalConfig, evaluate, format_table, load_data, run, summarize

__all__ = [
    "compare",
    "DEFAULTS",
    "METRICS",
    "SCORE_DIRECTIONS",
    "EvalConfig",
    "evaluate",
    "format_table",
    "load_data",
    "run",
    "summarize",
]
