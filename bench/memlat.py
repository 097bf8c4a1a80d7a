"""This machine's memory latency, for reading the engine's numbers at many shops.

``bench/memlat.c`` chases pointers through a random cycle over a buffer; the
time per load is the latency of wherever the buffer lives (L2, the last-level
cache, DRAM, with or without transparent huge pages). It is built with gcc on
first use, into the bench work directory.

    .venv/bin/python -m bench.memlat
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["SIZES_MIB", "memory_latency"]

SIZES_MIB = (1, 4, 64, 512)
SOURCE = Path(__file__).with_name("memlat.c")


def _binary(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    exe = workdir / "memlat"
    if not exe.exists() or exe.stat().st_mtime < SOURCE.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(SOURCE)], check=True)
    return exe


def memory_latency(workdir: Path, sizes_mib: tuple[int, ...] = SIZES_MIB, runs: int = 3) -> dict[str, Any]:
    """ns per dependent random load at each size (median of ``runs``), 4 KiB pages and,
    for the largest size, with MADV_HUGEPAGE (``huge_kb`` says whether the kernel gave any)."""
    exe = _binary(workdir)

    def one(mib: int, huge: int) -> tuple[float, int]:
        samples = []
        for _ in range(runs):
            out = subprocess.run(
                ["taskset", "-c", "0", str(exe), str(mib), str(huge)], capture_output=True, text=True, check=True
            ).stdout.split()
            samples.append((float(out[0]), int(out[1])))
        samples.sort()
        return samples[len(samples) // 2]

    ns = {str(mib): one(mib, 0)[0] for mib in sizes_mib}
    huge_ns, huge_kb = one(sizes_mib[-1], 1)
    return {"ns_per_load": ns, "huge_mib": sizes_mib[-1], "huge_ns_per_load": huge_ns, "huge_kb": huge_kb}


if __name__ == "__main__":
    print(json.dumps(memory_latency(Path(os.environ.get("BENCH_WORKDIR", "/tmp/dispatch-bench"))), indent=1))
