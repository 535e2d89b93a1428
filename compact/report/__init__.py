"""Reports from a recipe run's stored results: Table 3/4- and Table 6-style tables, Pareto plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from compact._atomic import write_text
from compact.errors import CompactError
from compact.recipes.runner import effective_data
from compact.report.collect import RunResults, collect
from compact.report.plots import draw, pareto_data
from compact.report.tables import comparison_table, exits_table


def make_report(run: str | Path, out: str | Path, partial: bool = False) -> dict[str, Any]:
    """Write the tables (Markdown, CSV, JSON), the Pareto plots (PNG, SVG) and their data into ``out``."""
    run, out = Path(run), Path(out)
    results: RunResults = collect(run)
    if results.missing and not partial:
        raise CompactError(
            f"{run} is not complete ({len(results.missing)} missing, e.g. {results.missing[0]}); finish it with "
            "compact run, or pass --partial for a report marked incomplete"
        )
    if not results.models:
        raise CompactError(f"{run} has no finished models to report")
    batches = sorted({int(k.split("/")[1]) for m in results.models for k in m.latency})
    table, exits = comparison_table(results, batches), exits_table(results)
    recipe = results.recipe
    smoke = results.settings.get("smoke")
    lines = [f"# {recipe.name}: compactness and accuracy", ""]
    if results.missing:
        lines += [f"**INCOMPLETE: {len(results.missing)} parts missing** ({'; '.join(results.missing[:5])}).", ""]
    if results.failed:
        lines += [
            f"**FAILED: {len(results.failed)} model(s) have no valid test error** ({'; '.join(results.failed[:5])}); "
            "they are left out of means and Pareto fronts.",
            "",
        ]
    if smoke:
        lines += ["**SMOKE RUN: one epoch on a few images per entry; the numbers mean nothing.**", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    lines += [
        f"Data: {json.dumps(effective_data(recipe.data, results.settings))}; seeds: {results.seeds}; "
        "training defaults: "
        f"{json.dumps(recipe.train_defaults)}.",
        "",
        "## Models compared (Tables 3-4 style)",
        "",
        table["markdown"],
        "",
    ]
    if exits["markdown"]:
        lines += ["## Error of every exit (Table 6 style)", "", exits["markdown"], ""]
    title = f"{recipe.name}" + (" (SMOKE RUN)" if smoke else "") + (" (INCOMPLETE)" if results.missing else "")
    plots = {axis: pareto_data(results, axis) for axis in ("macs", "latency")}
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str | None] = {}
    for axis, data in plots.items():
        for path in draw(data, title, out / f"pareto_{axis}"):
            files[path.name] = None  # written by draw
    images = ["![error vs MACs](pareto_macs.png)", "", "![error vs latency](pareto_latency.png)", ""]
    fronts = [line for data in plots.values() for line in _front_table(data)]
    markdown = "\n".join(lines + ["## Pareto plots", "", *images, *fronts])
    # the same without images, for places that show a Markdown text without the files beside it (CI job summaries)
    note = "The Pareto plots (`pareto_macs.png`, `pareto_latency.png`, and SVG) are in the report folder."
    summary = "\n".join(lines + ["## Pareto fronts", "", note, "", *fronts])
    files.update(
        {
            "report.md": markdown,
            "summary.md": summary,
            "table.csv": table["csv"],
            "table.json": _json(table["json"]),
            "exits.csv": exits["csv"],
            "exits.json": _json(exits["json"]),
        }
    )
    files["pareto.json"] = _json(plots)
    for name, text in files.items():
        if text is not None:
            write_text(out / name, text)
    return {
        "dir": str(out),
        "files": list(files),
        "markdown": markdown,
        "complete": not results.missing,
        "plots": plots,
    }


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json(value: Any) -> str:
    return json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"


def _front_table(data: dict[str, Any]) -> list[str]:
    """Markdown lines: the models on the Pareto front of one plot (lowest error for at most that cost)."""
    rows = [f"| {p['model']} | {p['x']:.4g} | {p['y']:.2f} |" for p in data["front"]]
    head = f"| model | {data['xlabel']} | {data['ylabel']} |"
    return [f"Pareto front by {data['axis']}: no other model is both cheaper and more accurate.", "", head,
            "|---|---|---|", *rows, ""]  # fmt: skip


__all__ = ["make_report"]
