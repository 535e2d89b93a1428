"""Learning curves of a recipe run: test error per epoch of every entry and output, mean over seeds with a
min..max band, one panel per exit depth and one for the final outputs (like the paper's Fig. 4), so that a
reader sees at a glance whether a model had stopped improving. Read from each run's ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from compact._jsonfile import read_json_lines
from compact._numbers import is_finite_number, is_number
from compact.errors import CompactError
from compact.recipes.runner import entry_dir


def _history(path: Path, outputs: int | None) -> list[dict[str, Any]]:
    """The epoch records of ``path``; each must be an object with a positive integer ``epoch`` and, when it
    was evaluated, one test error per output (``outputs``, when known; a number, or NaN / null for a
    diverged one). Anything else is a damaged file, never a curve drawn from part of it."""
    lines = list(enumerate(read_json_lines(path), 1))
    for n, record in lines:
        epoch, errors = record.get("epoch"), record.get("test_error_pct")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise CompactError(f"{path} is damaged: record {n} is not an epoch record (a positive integer 'epoch')")
        if errors is None:
            continue  # an epoch without evaluation (eval_every)
        if not isinstance(errors, list) or any(v is not None and not is_number(v) for v in errors):
            raise CompactError(
                f"{path} is damaged: record {n} (epoch {epoch}): 'test_error_pct' is not a list of numbers"
            )
        if any(is_finite_number(v) and not 0 <= v <= 100 for v in errors):
            raise CompactError(f"{path} is damaged: record {n} (epoch {epoch}) has a test error outside 0..100%")
        if outputs is not None and len(errors) != outputs:
            raise CompactError(
                f"{path} is damaged: record {n} (epoch {epoch}) has {len(errors)} test errors for {outputs} outputs"
            )
    return [record for _, record in lines]


def curves_data(run: Path, recipe: Any, seeds: list[int], models: list[Any]) -> dict[str, Any]:
    """Panels of series ``{entry, label, output, epochs, mean, min, max, seeds}`` (test error, %)."""
    depth_of = {(m.entry, m.output): m.depth for m in models}
    final_of = {(m.entry, m.output): m.is_final for m in models}
    panels: dict[str, dict[str, Any]] = {}
    for entry in recipe.entries:
        by_output: dict[int, dict[int, list[float]]] = {}  # output -> epoch -> values over seeds
        outputs = next((m.num_outputs for m in models if m.entry == entry.name), None)
        for seed in seeds:
            folder = entry_dir(run, entry.name, seed)
            path = folder / "metrics.jsonl"
            records = _history(path, outputs)
            if not records and path.is_file() and entry.kind in ("train", "probe") and (folder / "done.json").is_file():
                raise CompactError(f"{path} is damaged: a finished run has no epochs")
            for record in records:
                errors = record.get("test_error_pct") or []
                epoch = record["epoch"]
                for k, v in enumerate(errors):
                    if is_finite_number(v):
                        by_output.setdefault(k, {}).setdefault(epoch, []).append(float(v))
        for k, epochs in sorted(by_output.items()):
            key = (entry.name, None) if entry.kind == "prune" else (entry.name, k)
            is_final = final_of.get(key, k == max(by_output))
            depth = depth_of.get(key)
            title = "final outputs" if is_final else f"exits at layer {depth}"
            panel = panels.setdefault(title, {"title": title, "depth": None if is_final else depth, "series": []})
            xs = sorted(epochs)
            panel["series"].append(
                {
                    "entry": entry.name,
                    "label": entry.label + ("" if is_final else f", exit {k}"),
                    "output": None if entry.kind == "prune" else k,
                    "epochs": xs,
                    "mean": [statistics.fmean(epochs[e]) for e in xs],
                    "min": [min(epochs[e]) for e in xs],
                    "max": [max(epochs[e]) for e in xs],
                    "seeds": [len(epochs[e]) for e in xs],
                }
            )
    ordered = sorted(panels.values(), key=lambda p: (p["depth"] is None, p["depth"] or 0))
    return {"ylabel": "test error (%)", "xlabel": "epoch", "band": "min..max over seeds", "panels": ordered}


def draw_curves(data: dict[str, Any], title: str, path_stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.svg``: one panel per exit depth and one for the final outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from compact.report.plots import save_figure

    panels = data["panels"] or [{"title": "no curves", "series": []}]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for s in panel["series"]:
            (line,) = ax.plot(s["epochs"], s["mean"], marker="." if len(s["epochs"]) < 30 else None, label=s["label"])
            ax.fill_between(s["epochs"], s["min"], s["max"], color=line.get_color(), alpha=0.18, linewidth=0)
        ax.set_title(panel["title"], fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(data["xlabel"])
        ax.set_ylabel(data["ylabel"])
        ax.grid(True, alpha=0.3)
        if panel["series"]:
            ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{title}: test error per epoch (mean, band {data['band']})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path_stem)
