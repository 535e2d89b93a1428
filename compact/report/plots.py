"""Pareto plots: test error against MACs and against latency.

Networks with several outputs are drawn as one curve per method (its outputs, shallow to deep); pruned
and single-output networks as points per method; error bars are the standard deviation over seeds. The
Pareto front (no other model is both cheaper and more accurate) is drawn as a dashed step line and its
models are ringed. :func:`pareto_data` returns exactly what is drawn, so tests can check the data behind
the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compact.report.collect import Model, RunResults

AXES = {
    "macs": ("MACs per image, convolutions + linear (millions)", lambda m: m.stat(m.macs)[0], 1e6),
    "latency": ("ONNX Runtime latency, batch 1 (ms)", lambda m: m.latency_ms("onnxruntime/1"), 1.0),
}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower or equal cost and error, one strictly)."""
    front = []
    for i, (c, e) in enumerate(points):
        dominated = any((c2 <= c and e2 <= e) and (c2 < c or e2 < e) for j, (c2, e2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto_data(results: RunResults, axis: str) -> dict[str, Any]:
    """Series (curves of multi-output networks, points of the others) and the front, in plot units."""
    label, cost_of, scale = AXES[axis]
    curves: dict[str, list[Model]] = {}
    points: list[Model] = []
    for m in results.models:
        if m.stat(m.errors)[0] is None or cost_of(m) is None:
            continue
        (curves.setdefault(m.entry, []) if m.num_outputs > 1 else points).append(m)
    series = []
    for ms in curves.values():
        ms = sorted(ms, key=lambda m: m.output)
        probed = ms[0].kind == "probe" and "probe" not in ms[0].label.lower()
        series.append(
            {
                "label": ms[0].label + (" (probed)" if probed else ""),
                "kind": "curve",
                "models": [m.name for m in ms],
                "x": [cost_of(m) / scale for m in ms],
                "y": [m.stat(m.errors)[0] for m in ms],
                "yerr": [m.stat(m.errors)[1] for m in ms],
            }
        )
    for m in points:
        series.append(
            {
                "label": m.label,
                "kind": "point",
                "models": [m.name],
                "x": [cost_of(m) / scale],
                "y": [m.stat(m.errors)[0]],
                "yerr": [m.stat(m.errors)[1]],
            }
        )
    flat = [(x, y, name) for s in series for x, y, name in zip(s["x"], s["y"], s["models"], strict=True)]
    front = pareto_front([(x, y) for x, y, _ in flat])
    return {
        "axis": axis,
        "xlabel": label,
        "ylabel": "test error (%)",
        "series": series,
        "front": [{"model": flat[i][2], "x": flat[i][0], "y": flat[i][1]} for i in front],
    }


def draw(data: dict[str, Any], title: str, path_stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    markers = "osD^v<>ph*"
    for i, s in enumerate(data["series"]):
        if s["kind"] == "cascade":  # a threshold sweep: many points, no error bars
            ax.plot(s["x"], s["y"], linestyle=":", marker=".", markersize=4, label=f"{s['label']} (threshold sweep)")
            continue
        style = "-" if s["kind"] == "curve" else "none"
        ax.errorbar(
            s["x"],
            s["y"],
            yerr=s["yerr"],
            marker=markers[i % len(markers)],
            linestyle=style,
            capsize=3,
            markersize=6,
            label=s["label"],
        )
    fx = [p["x"] for p in data["front"]]
    fy = [p["y"] for p in data["front"]]
    if fx:
        ax.step(fx, fy, where="post", linestyle="--", color="black", linewidth=1, label="Pareto front")
        ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1)
    ax.set_xlabel(data["xlabel"])
    ax.set_ylabel(data["ylabel"])
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if data["series"]:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, f"no model has a {data['axis']} measurement", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return save_figure(fig, path_stem)


def save_figure(fig, path_stem: Path) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg`` (each to a temporary name, then renamed) and
    close it."""
    import matplotlib.pyplot as plt

    written = []
    for ext in ("png", "svg"):
        path = path_stem.with_suffix(f".{ext}")
        tmp = path.with_name(f".{path.name}.tmp.{ext}")
        fig.savefig(tmp, format=ext)
        tmp.replace(path)
        written.append(path)
    plt.close(fig)
    return written
