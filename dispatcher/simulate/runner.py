"""Run every variant of a scenario and gather the result (metrics, ranking); and the command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

import _fastpath

from .engine_run import simulate
from .metrics import ranking, run_metrics
from .workload import Scenario, Variant, WorkloadError, apply_variant, load_variants, load_workload

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "Progress", "add_simulate_arguments", "run_variants", "simulate_command"]

EXIT_OK: Final = 0
EXIT_BAD_INPUT: Final = 2
"""A workload, variants file or journal that cannot be simulated, or a report that cannot be written."""


class Progress:
    """A progress bar on a terminal, else one line every ``every_s`` seconds (and per variant)."""

    def __init__(self, stream: IO[str], total: int, every_s: float = 5.0) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self.every_s = every_s
        self.last = 0.0
        self.index = 0
        self.name = ""

    def start(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.last = time.monotonic()
        if not self.tty:
            print(f"simulate: variant {index + 1}/{self.total} {name}: started", file=self.stream, flush=True)

    def update(self, fraction: float) -> None:
        now = time.monotonic()
        if self.tty:
            done = (self.index + fraction) / self.total
            bar = "#" * int(done * 30)
            self.stream.write(f"\r[{bar:<30}] {done * 100:5.1f}%  {self.index + 1}/{self.total} {self.name[:30]:<30}")
            self.stream.flush()
        elif now - self.last >= self.every_s:
            self.last = now
            print(f"simulate: variant {self.index + 1}/{self.total} {self.name}: {fraction * 100:.0f}% of the day",
                  file=self.stream, flush=True)  # fmt: skip

    def finish(self, index: int, name: str, seconds: float) -> None:
        if not self.tty:
            print(f"simulate: variant {index + 1}/{self.total} {name}: done in {seconds:.1f}s", file=self.stream,
                  flush=True)  # fmt: skip

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_variants(
    scenario: Scenario,
    variants: list[Variant],
    *,
    progress: Progress | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Simulate the scenario under each variant (none: the scenario as given); the result dict."""
    chosen = variants or [Variant("as-given")]
    prepared = [(v, apply_variant(scenario, v)) for v in chosen]  # every override checked before running
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for i, (variant, sc) in enumerate(prepared):
        t0 = time.monotonic()
        update: Callable[[float], None] | None = None
        if progress is not None:
            progress.start(i, variant.name)
            update = progress.update
        run = simulate(sc, progress=update)
        metrics = run_metrics(run)
        metrics["overrides"] = variant.describe()
        metrics["seconds"] = round(time.monotonic() - t0, 3)
        results.append(metrics)
        if progress is not None:
            progress.finish(i, variant.name, time.monotonic() - t0)
    if progress is not None:
        progress.close()
    timings = {v["name"]: v.pop("seconds") for v in results}
    return {
        "input": label or scenario.name,
        "seed": scenario.seed,
        "engine": _fastpath.ENGINE_KIND,
        "start_ms": scenario.start_ms,
        "end_ms": scenario.end_ms,
        "ranking": ranking(results),
        "variants": results,
        "timing_s": {"total": round(time.monotonic() - started, 3), **timings},
    }


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workload", metavar="FILE.toml", help="a synthetic workload (dispatcher/docs/SIMULATE.md)")
    source.add_argument("--journal", metavar="DATA_DIR", help="a data dir: its recorded traffic and configuration")
    parser.add_argument("--variants", metavar="FILE.toml", help="the what-ifs ([[variants]]); else the workload's")
    parser.add_argument("--out", required=True, metavar="DIR", help="where report.html, the PNGs, metrics.* go")
    parser.add_argument("--seed", type=int, default=None, help="the simulation's seed (default: the workload's, or 1)")
    parser.add_argument("--shop", action="append", default=None, help="--journal: only this shop (repeatable)")
    parser.add_argument("--calibrate", action="store_true",
                        help="--journal: also replay the recorded events and check the recorded decisions recur")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def simulate_command(ns: argparse.Namespace, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """``dispatcher simulate``: 0, or 2 with one line naming the problem (never a traceback)."""
    from .report import ReportError, summary_text, write_report

    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        extra: dict[str, Any] = {}
        if ns.workload is not None:
            scenario = load_workload(Path(ns.workload), ns.seed)
            label = str(ns.workload)
        else:
            from .journal import calibrate, load_journal

            directory = Path(ns.journal)
            scenario = load_journal(directory, seed=ns.seed, shops=ns.shop)
            label = f"journal {directory}"
            if ns.calibrate:
                check = calibrate(directory, shops=ns.shop)
                extra["calibration"] = check.to_json()
        variants = load_variants(Path(ns.variants)) if ns.variants else scenario.variants
        progress = None if ns.quiet else Progress(err, max(1, len(variants)))
        result = run_variants(scenario, variants, progress=progress, label=label)
        result.update(extra)
        paths = write_report(result, Path(ns.out))
    except (WorkloadError, ReportError) as exc:
        print(f"dispatcher simulate: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    print(summary_text(result), file=out)
    if "calibration" in extra:
        cal = extra["calibration"]
        verdict = "exact" if cal["exact"] else f"{cal['mismatches']} MISMATCHES"
        print(f"\ncalibration: {cal['decisions']} recorded decisions replayed: {verdict}", file=out)
    print(f"\nreport: {paths[-1]}  (metrics.json, metrics.csv and {len(paths) - 3} PNGs beside it)", file=out)
    return EXIT_OK
