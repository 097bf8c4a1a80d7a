"""The README's rule map names functions that exist, in both engines."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASTPATH = ROOT / "_fastpath"


def _table(title: str) -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(title) :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _names(cell: str) -> list[tuple[str | None, str]]:
    """(file or None, name) for every backticked `file: a, b` or `name` of a cell."""
    out: list[tuple[str | None, str]] = []
    current: str | None = None
    for part in re.split(r";", cell):
        for token in re.findall(r"`([^`]+)`", part):
            if ": " in token:
                current, token = token.split(": ", 1)
            out.append((current, token))
        current = None if not part.strip() else current
    return out


def _reference_has(file: str | None, name: str) -> bool:
    modules = (
        [file.removesuffix(".py")]
        if file
        else [
            "validation",
            "eligibility",
            "strategies",
            "shop",
            "routing",
            "timers",
            "engine",
            "operations",
            "reads",
            "snapshot",
        ]
    )
    for module_name in modules:
        if module_name == "model.day_bounds":
            return True
        path = f"_fastpath.{module_name}" if module_name in ("model", "wire") else f"_fastpath.reference.{module_name}"
        obj: object = importlib.import_module(path)
        try:
            for attr in name.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return True
    return False


def _compiled_has(file: str | None, name: str) -> bool:
    if "." in name:  # model.day_bounds
        module, attr = name.split(".", 1)
        return hasattr(importlib.import_module(f"_fastpath.{module}"), attr)
    files = [FASTPATH / file] if file else sorted(FASTPATH.glob("*.pyx"))
    pattern = re.compile(rf"^\s*(?:cdef|cpdef|def)\b[^\n(]*\b{re.escape(name)}\s*\(", re.MULTILINE)
    return any(pattern.search(path.read_text()) for path in files)


def test_every_name_in_the_rule_map_exists() -> None:
    rows = _table("## The rules and where they live")
    header, *rules = rows[rows.index(next(r for r in rows if r[0].startswith("rule"))) :]
    assert header[1].startswith("reference") and header[2].startswith("compiled")
    assert len(rules) >= 19
    missing = []
    for rule, reference, compiled in ((r[0], r[1], r[2]) for r in rules):
        for file, name in _names(reference):
            if file and file.endswith(".py") and not _reference_has(file, name):
                missing.append(("reference", rule, file, name))
            elif not file and not _reference_has(None, name):
                missing.append(("reference", rule, file, name))
        for file, name in _names(compiled):
            if not _compiled_has(file, name):
                missing.append(("compiled", rule, file, name))
    assert not missing, missing


def test_every_part_in_the_part_table_exists() -> None:
    rows = _table("## The rules and where they live")
    parts = [
        r
        for r in rows
        if r[0]
        in {
            "constants",
            "validation",
            "eligibility",
            "strategies",
            "shop",
            "routing",
            "engine",
            "operations",
            "wire",
            "snapshot",
            "timers",
            "reads",
        }
    ]
    assert len(parts) == 12
    for _part, compiled, reference, _ in parts:
        for name in re.findall(r"`([^`]+)`", compiled):
            if not name.startswith("."):  # `constants.pyx`/`.pxd`
                assert (FASTPATH / name).exists(), name
        for name in re.findall(r"`([^`]+)`", reference):
            path = ROOT / name if name.startswith("_fastpath/") else FASTPATH / "reference" / name
            assert path.exists(), name
