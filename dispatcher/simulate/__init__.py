"""``dispatcher simulate``: what-if runs of real or synthetic traffic through other settings (issue 17).

A conversation-level discrete-event simulation drives the real engine, once per variant, and
writes a report (HTML, PNGs, JSON, CSV). See dispatcher/docs/SIMULATE.md.
"""

from __future__ import annotations

from .engine_run import Run, simulate
from .metrics import gini, jain, percentile, ranking, run_metrics
from .runner import add_simulate_arguments, run_variants, simulate_command
from .workload import (
    Arrival,
    Behaviour,
    Distribution,
    PresenceChange,
    Scenario,
    Variant,
    WorkloadError,
    apply_variant,
    load_variants,
    load_workload,
    parse_variants,
    parse_workload,
)

__all__ = [
    "Arrival",
    "Behaviour",
    "Distribution",
    "PresenceChange",
    "Run",
    "Scenario",
    "Variant",
    "WorkloadError",
    "add_simulate_arguments",
    "apply_variant",
    "gini",
    "jain",
    "load_variants",
    "load_workload",
    "parse_variants",
    "parse_workload",
    "percentile",
    "ranking",
    "run_metrics",
    "run_variants",
    "simulate",
    "simulate_command",
]
