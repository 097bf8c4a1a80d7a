"""The output of ``dispatcher simulate``: figures (PNG), one self-contained HTML report,
metrics.json, metrics.csv, and the one-screen terminal summary.

matplotlib (the ``sim`` extra) is imported here, inside ``write_report``, and nowhere else:
the server never needs it.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Final

from .metrics import METRICS, to_csv

__all__ = ["FIGURES", "ReportError", "summary_text", "write_report"]

FIGURES: Final = ("load", "waiting", "waits", "spread", "saturation")
"""The figures, in report order: each is ``<name>.png`` in the output dir."""
_SIZE: Final = (10.0, 4.5)
_DPI: Final = 100


class ReportError(RuntimeError):
    """The report cannot be written (matplotlib missing, output dir unwritable)."""


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError(
            "the report needs matplotlib: pip install 'dispatch[sim]' (or 'matplotlib>=3.8,<4')"
        ) from None
    variants = result["variants"]
    names = [v["name"] for v in variants]
    figs: dict[str, Any] = {}

    n = len(variants)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(_SIZE[0], 2.6 * rows + 0.6), squeeze=False, sharey=True)
    for i, v in enumerate(variants):
        ax = axes[i // cols][i % cols]
        hours = [m / 60 for m in v["series"]["minutes"]]
        for agent, series in v["series"]["active"].items():
            ax.plot(hours, series, linewidth=0.8, label=agent)
        ax.set_title(v["name"], fontsize=9)
        ax.set_xlabel("hour", fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].set_ylabel("active conversations", fontsize=8)
    if 0 < len(variants[0]["series"]["active"]) <= 12:
        axes[0][0].legend(fontsize=6)
    fig.suptitle("Per-agent load over the day", fontsize=11)
    fig.tight_layout()
    figs["load"] = fig

    fig, ax = plt.subplots(figsize=_SIZE)
    for v in variants:
        ax.plot([m / 60 for m in v["series"]["minutes"]], v["series"]["waiting"], linewidth=1, label=v["name"])
    ax.set_xlabel("hour")
    ax.set_ylabel("conversations waiting")
    ax.set_title("Queue + staging + pool over the day")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["waiting"] = fig

    fig, (left, right) = plt.subplots(1, 2, figsize=_SIZE)
    width = 0.8 / 3
    for k, q in enumerate(("p50", "p90", "p99")):
        xs = [i + (k - 1) * width for i in range(n)]
        left.bar(xs, [v["summary"][f"wait_assign_{q}_s"] or 0 for v in variants], width, label=q)
        right.bar(xs, [v["summary"][f"wait_reply_{q}_s"] or 0 for v in variants], width, label=q)
    for ax, title in ((left, "time to assignment (s)"), (right, "time to first reply (s)")):
        ax.set_xticks(range(n), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    figs["waits"] = fig

    fig, (left, right) = plt.subplots(1, 2, figsize=_SIZE)
    left.bar(range(n), [v["summary"]["jain"] or 0 for v in variants], label="Jain (1 = even)")
    left.bar(range(n), [v["summary"]["gini"] or 0 for v in variants], width=0.4, label="Gini (0 = even)")
    left.set_xticks(range(n), names, rotation=30, ha="right", fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_title("load spread (received / capacity)", fontsize=10)
    left.legend(fontsize=8)
    agents = sorted({a for v in variants for a in v["agents"] if v["agents"][a]["received_per_capacity"] is not None})
    bw = 0.8 / max(1, n)
    for i, v in enumerate(variants):
        right.bar([j + (i - (n - 1) / 2) * bw for j in range(len(agents))],
                  [v["agents"].get(a, {}).get("received_per_capacity") or 0 for a in agents], bw, label=v["name"])  # fmt: skip
    right.set_xticks(range(len(agents)), agents, rotation=60, ha="right", fontsize=6)
    right.set_title("conversations received per unit of capacity", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    figs["spread"] = fig

    fig, axes1 = plt.subplots(1, 3, figsize=_SIZE)
    for ax, key, title in (
        (axes1[0], "saturated_share", "online time at full capacity"),
        (axes1[1], "affinity_hit_rate", "affinity hit rate"),
        (axes1[2], "reroutes", "re-routes + reclaims"),
    ):
        if key == "reroutes":
            values = [v["summary"]["reroutes"] + v["summary"]["reclaims"] for v in variants]
        else:
            values = [v["summary"][key] or 0 for v in variants]
        ax.bar(range(n), values, color="tab:orange" if key == "saturated_share" else "tab:blue")
        ax.set_xticks(range(n), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    figs["saturation"] = fig
    return figs


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)


def _html(result: dict[str, Any], images: dict[str, bytes]) -> str:
    esc = html.escape
    variants = result["variants"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Dispatch simulation</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "font-size:13px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>Dispatch simulation: {esc(result['input'])}</h1>",
        f"<p>seed {result['seed']}, {len(variants)} variants, "
        f"{variants[0]['summary']['conversations'] if variants else 0} conversations each; "
        f"engine {esc(result['engine'])}. See dispatcher/docs/SIMULATE.md for what is modelled.</p>",
        "<h2 id='ranking'>Ranking</h2><table><tr><th>metric</th><th>best</th><th>value</th></tr>",
    ]
    for row in result["ranking"]:
        best = "all equal" if row["all_equal"] else ", ".join(row["best"])
        parts.append(f"<tr><td>{esc(row['label'])}</td><td>{esc(best)}</td><td>{_fmt(row['value'])}</td></tr>")
    parts.append("</table><h2 id='variants'>Variants</h2><table><tr><th>variant</th><th>overrides</th></tr>")
    for v in variants:
        parts.append(f"<tr><td>{esc(v['name'])}</td><td style='text-align:left'>{esc(v['overrides'])}</td></tr>")
    parts.append("</table><h2 id='metrics'>Metrics side by side</h2><table><tr><th>metric</th>")
    parts += [f"<th>{esc(v['name'])}</th>" for v in variants]
    parts.append("</tr>")
    keys = list(variants[0]["summary"]) if variants else []
    for key in keys:
        label = METRICS.get(key, (key, ""))[0]
        parts.append(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{_fmt(v['summary'][key])}</td>" for v in variants))
    parts.append("</table>")
    titles = {"load": "Per-agent load", "waiting": "Queue and staging", "waits": "Buyer waits",
              "spread": "Load spread", "saturation": "Saturation, affinity, re-routes"}  # fmt: skip
    for name in FIGURES:
        data = base64.b64encode(images[name]).decode()
        parts.append(f"<h2 id='{name}'>{titles[name]}</h2><img alt='{name}' src='data:image/png;base64,{data}'>")
    parts.append("<h2 id='agents'>Agents</h2>")
    for v in variants:
        parts.append(f"<h3>{esc(v['name'])}</h3><table><tr><th>agent</th><th>capacity</th><th>weight</th>"
                     "<th>received</th><th>per capacity</th><th>mean active</th><th>peak</th>"
                     "<th>saturated</th><th>busy</th></tr>")  # fmt: skip
        for agent, a in v["agents"].items():
            cells = [a["capacity"], a["weight"], a["received"], a["received_per_capacity"], a["mean_active"],
                     a["peak_active"], a["saturated_share"], a["busy_share"]]  # fmt: skip
            parts.append(f"<tr><td>{esc(agent)}</td>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: dict[str, Any], out: Path) -> list[Path]:
    """Write report.html, the PNGs, metrics.json and metrics.csv into ``out``; the paths written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out}: cannot create the output dir: {exc.strerror or exc}") from None
    figs = _figures(result)
    import io

    import matplotlib.pyplot as plt

    images: dict[str, bytes] = {}
    written: list[Path] = []
    try:
        for name in FIGURES:
            buf = io.BytesIO()
            figs[name].savefig(buf, format="png", dpi=_DPI)
            plt.close(figs[name])
            images[name] = buf.getvalue()
            path = out / f"{name}.png"
            path.write_bytes(images[name])
            written.append(path)
        (out / "metrics.json").write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
        (out / "metrics.csv").write_text(to_csv(result["variants"]))
        (out / "report.html").write_text(_html(result, images))
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the report: {exc.strerror or exc}") from None
    return [*written, out / "metrics.json", out / "metrics.csv", out / "report.html"]


def summary_text(result: dict[str, Any], width: int = 100) -> str:
    """The one-screen terminal summary: key metrics per variant, then the ranking."""
    variants = result["variants"]
    cols = [("variant", None), ("assign p90", "wait_assign_p90_s"), ("reply p90", "wait_reply_p90_s"),
            ("jain", "jain"), ("gini", "gini"), ("queue max", "queue_max"), ("affinity", "affinity_hit_rate"),
            ("reroute", "reroutes"), ("reclaim", "reclaims"), ("saturated", "saturated_share")]  # fmt: skip
    rows = [[h for h, _ in cols]]
    for v in variants:
        rows.append([v["name"][:20]] + [_fmt(v["summary"][k]) for _, k in cols[1:] if k is not None])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]  # fmt: skip
    lines.append("")
    lines.append("best per metric:")
    for row in result["ranking"]:
        best = "(all equal)" if row["all_equal"] else ", ".join(row["best"])
        lines.append(f"  {row['label'][:48]:<48}  {best[:32]:<32} {_fmt(row['value'])}")
    return "\n".join(line[:width] for line in lines)
