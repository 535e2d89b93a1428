"""Tables and plots of a cascade study (:func:`compact.cascade.sweep.study`), from its stored JSON only."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from compact.errors import CompactError


def _latency(row: dict[str, Any], batch: str) -> str:
    lat = row.get("latency_ms_per_image") or {}
    return f"{lat[batch]:.4f}" if batch in lat else "-"


def cascade_markdown(result: dict[str, Any], title: str = "Early-exit cascade") -> str:
    """The sweep (one row per threshold), the static outputs and the operating point, as Markdown."""
    batches = [str(b) for b in (result.get("latency") or {}).get("batches", [])]
    n = len(result["exit_macs"])
    lat_head = "".join(f" ms/img b{b} |" for b in batches)
    lines = [
        f"## {title}",
        "",
        f"Exit rule: {result['rule']} > threshold"
        + (f", temperatures {result['temperatures']}" if result.get("temperatures") else "")
        + f"; {result['test_images']:,} test images. MACs per image are exact (segments and heads run, from the "
        "manifest); latency is measured with ONNX Runtime"
        + (
            f" on {result['latency']['images']} test images, median of {result['latency']['rounds']} interleaved "
            "rounds. The cascade's sessions, and the static outputs timed with them below, do not spin-wait "
            "between runs (several sessions in turn would take the cores from each other); a lone model's "
            "profile uses ONNX Runtime's default spinning threads, faster at batch 1 on few cores, so compare "
            "the cascade's latency with the static rows below rather than with the profiles."
            if result.get("latency")
            else " (not measured)."
        ),
        "",
        "| threshold | error % | "
        + " | ".join(f"exit {i} %" for i in range(n - 1))
        + " | final % | mean MACs |"
        + lat_head,
        "|---:|---:|" + "---:|" * n + "---:|" + "---:|" * len(batches),
    ]
    for r in result["rows"]:
        shares = " | ".join(f"{100 * s:.1f}" for s in r["exit_share"])
        lat = "".join(f" {_latency(r, b)} |" for b in batches)
        lines.append(f"| {r['threshold']:.4g} | {r['error_pct']:.2f} | {shares} | {r['mean_macs'] / 1e6:.3f}M |{lat}")
    lines += ["", "Static outputs (each exit as its own graph, every sample):", "",
              "| output | error % | MACs |" + lat_head, "|---|---:|---:|" + "---:|" * len(batches)]  # fmt: skip
    for s in result["static"]:
        lat = "".join(f" {_latency(s, b)} |" for b in batches)
        lines.append(f"| {s['name']} | {s['error_pct']:.2f} | {s['macs'] / 1e6:.3f}M |{lat}")
    op = result.get("operating_point")
    if op:
        goal = (
            f"target error {op['target_error_pct']}%"
            if op["target_error_pct"] is not None
            else f"budget {op['budget_macs']:,.0f} MACs"
        )
        lines += [
            "",
            f"Operating point ({goal}, chosen on {result['validation_images']:,} held-out training images): threshold "
            f"{op['threshold']:.4g}; validation {op['validation']['error_pct']:.2f}% at "
            f"{op['validation']['mean_macs'] / 1e6:.3f}M MACs; test {op['test']['error_pct']:.2f}% at "
            f"{op['test']['mean_macs'] / 1e6:.3f}M MACs.",
        ]
    return "\n".join(lines) + "\n"


def cascade_csv(result: dict[str, Any]) -> str:
    batches = [str(b) for b in (result.get("latency") or {}).get("batches", [])]
    n = len(result["exit_macs"])
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["threshold", "error_pct", *[f"share_exit{i}" for i in range(n)], "mean_macs",
                "mean_macs_conv_linear", *[f"ms_per_image_b{b}" for b in batches]])  # fmt: skip
    for r in result["rows"]:
        lat = r.get("latency_ms_per_image") or {}
        w.writerow([r["threshold"], r["error_pct"], *r["exit_share"], round(r["mean_macs"]),
                    round(r["mean_macs_conv_linear"]), *[lat.get(b, "") for b in batches]])  # fmt: skip
    return out.getvalue()


def cascade_plot_data(result: dict[str, Any], axis: str) -> dict[str, Any]:
    """Series to draw: the cascade's curve and the static outputs, on ``axis`` ``macs`` or ``latency:B``."""

    def x_of(row: dict[str, Any], macs_key: str) -> float | None:
        if axis == "macs":
            return row[macs_key] / 1e6
        return (row.get("latency_ms_per_image") or {}).get(axis.partition(":")[2])

    curve = [(x_of(r, "mean_macs"), r["error_pct"]) for r in result["rows"]]
    static = [(x_of(s, "macs"), s["error_pct"], s["name"]) for s in result["static"]]
    return {
        "axis": axis,
        "xlabel": "mean MACs per image (millions)" if axis == "macs" else f"ms per image, batch {axis[8:]}",
        "cascade": [{"x": x, "y": y} for x, y in curve if x is not None],
        "static": [{"x": x, "y": y, "name": n} for x, y, n in static if x is not None],
    }


def draw_cascade(result: dict[str, Any], stem: Path, title: str = "early-exit cascade") -> list[Path]:
    """``<stem>_macs`` and, when latency was measured, ``<stem>_latency_b<B>`` plots (PNG and SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compact.report.plots import save_figure

    axes = ["macs"] + [f"latency:{b}" for b in (result.get("latency") or {}).get("batches", [])]
    written = []
    for axis in axes:
        data = cascade_plot_data(result, axis)
        fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
        ax.plot([p["x"] for p in data["cascade"]], [p["y"] for p in data["cascade"]], "-o", markersize=3,
                label=f"cascade ({result['rule']} threshold sweep)")  # fmt: skip
        ax.plot([p["x"] for p in data["static"]], [p["y"] for p in data["static"]], "s", markersize=7,
                label="static outputs")  # fmt: skip
        for p in data["static"]:
            ax.annotate(p["name"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(data["xlabel"])
        ax.set_ylabel("test error (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = "macs" if axis == "macs" else f"latency_b{axis.partition(':')[2]}"
        written += save_figure(fig, stem.with_name(f"{stem.name}_{name}"))
    return written


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def cascade_over_seeds(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per threshold, the mean over seeds of error, exit shares, mean MACs and latency (the seeds' sweeps
    share their thresholds); error spread as min..max. Static outputs likewise."""
    studies = [by_seed[s] for s in sorted(by_seed)]
    thresholds = [r["threshold"] for r in studies[0]["rows"]]
    if any([r["threshold"] for r in s["rows"]] != thresholds for s in studies):
        raise CompactError("the seeds' cascade sweeps have different thresholds; run them with one recipe")
    rows = []
    for k, t in enumerate(thresholds):
        per = [s["rows"][k] for s in studies]
        errors = [r["error_pct"] for r in per]
        lat_keys = sorted({b for r in per for b in (r.get("latency_ms_per_image") or {})}, key=int)
        rows.append(
            {
                "threshold": t,
                "error_pct": _mean(errors),
                "error_min": min(errors),
                "error_max": max(errors),
                "exit_share": [_mean([r["exit_share"][i] for r in per]) for i in range(len(per[0]["exit_share"]))],
                "mean_macs": _mean([r["mean_macs"] for r in per]),
                "mean_macs_conv_linear": _mean([r["mean_macs_conv_linear"] for r in per]),
                "latency_ms_per_image": {
                    b: _mean([(r.get("latency_ms_per_image") or {}).get(b) for r in per]) for b in lat_keys
                },
            }
        )
    static = []
    for k, s0 in enumerate(studies[0]["static"]):
        per = [s["static"][k] for s in studies]
        lat_keys = sorted({b for r in per for b in (r.get("latency_ms_per_image") or {})}, key=int)
        static.append(
            {
                "output": s0["output"],
                "name": s0["name"],
                "error_pct": _mean([r["error_pct"] for r in per]),
                "macs": s0["macs"],
                "macs_conv_linear": s0["macs_conv_linear"],
                "latency_ms_per_image": {
                    b: _mean([(r.get("latency_ms_per_image") or {}).get(b) for r in per]) for b in lat_keys
                },
            }
        )
    lat = next((s.get("latency") for s in studies if s.get("latency")), None)
    return {
        "seeds": sorted(by_seed),
        "rule": studies[0]["rule"],
        "temperatures": None,
        "test_images": studies[0]["test_images"],
        "exit_macs": studies[0]["exit_macs"],
        "rows": rows,
        "static": static,
        "latency": lat,
    }


def cascade_series(results: Any, axis: str) -> list[dict[str, Any]]:
    """Pareto-plot series of every cascade entry (mean over seeds): error against mean conv+linear MACs
    (millions) or against measured ms per image at batch 1."""
    series = []
    for name, c in results.cascades.items():
        agg = cascade_over_seeds(c["by_seed"])
        xs, ys, labels = [], [], []
        for r in agg["rows"]:
            x = r["mean_macs_conv_linear"] / 1e6 if axis == "macs" else r["latency_ms_per_image"].get("1")
            if x is not None and r["error_pct"] is not None:
                xs.append(x)
                ys.append(r["error_pct"])
                labels.append(f"{c['label']} @ {r['threshold']:.4g}")
        if xs:
            series.append({"label": c["label"], "kind": "cascade", "entry": name, "models": labels, "x": xs, "y": ys,
                           "yerr": [None] * len(xs)})  # fmt: skip
    return series


def cascades_markdown(results: Any, budget: str) -> list[str]:
    """The report's section on cascade entries: one sweep table per entry (mean over seeds)."""
    if not results.cascades:
        return []
    lines = ["## Early-exit cascades", "", budget, ""]
    for c in results.cascades.values():
        agg = cascade_over_seeds(c["by_seed"])
        text = cascade_markdown(agg, f"{c['label']} (cascade of {c['of']}; mean over seeds {agg['seeds']})")
        lines += ["#" + text]
        lines += _at_equal_cost(c["label"], agg, results.models)
    return lines


def _at_equal_cost(label: str, agg: dict[str, Any], models: list[Any]) -> list[str]:
    """Each pruned model and each single-output network against the cascade's most accurate threshold whose
    mean conv+linear MACs do not exceed the model's (means over seeds; no interval)."""
    rows = []
    for m in models:
        if not (m.kind == "prune" or m.num_outputs == 1):
            continue
        macs, err = m.stat(m.macs)[0], m.stat(m.errors)[0]
        if macs is None or err is None:
            continue
        fits = [r for r in agg["rows"] if r["mean_macs_conv_linear"] <= macs and r["error_pct"] is not None]
        if not fits:
            rows.append(f"| {m.name} | {macs / 1e6:.2f}M | {err:.2f} | none within its MACs | - | - | - |")
            continue
        best = min(fits, key=lambda r: (r["error_pct"], r["mean_macs_conv_linear"]))
        rows.append(
            f"| {m.name} | {macs / 1e6:.2f}M | {err:.2f} | {best['threshold']:.4g} | "
            f"{best['mean_macs_conv_linear'] / 1e6:.2f}M | {best['error_pct']:.2f} | {best['error_pct'] - err:+.2f} |"
        )
    if not rows:
        return []
    return [
        f"At equal cost: {label} at its most accurate threshold within each model's conv+linear MACs (means over "
        "seeds, no interval; thresholds chosen on the test sweep, so the cascade's figure is optimistic).",
        "",
        "| model | MACs | error % | threshold | cascade mean MACs | cascade error % | difference (pp) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
