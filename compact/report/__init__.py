"""Reports from a recipe run's stored results: Table 3/4- and Table 6-style tables, Pareto plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from compact._atomic import refuse_links, write_text
from compact._jsonfile import try_read_json_object
from compact.errors import CompactError
from compact.recipes.runner import effective_data, entry_dir
from compact.report.cascade import cascade_series, cascades_markdown
from compact.report.claims import claims_markdown, evaluate_claims
from compact.report.collect import RunResults, collect
from compact.report.curves import curves_data, draw_curves
from compact.report.plots import draw, pareto_data
from compact.report.tables import comparison_table, exits_table


def make_report(run: str | Path, out: str | Path, partial: bool = False) -> dict[str, Any]:
    """Write the tables (Markdown, CSV, JSON), the Pareto plots (PNG, SVG) and their data into ``out``."""
    run, out = Path(run), Path(out)
    refuse_links(out)
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
    data = effective_data(recipe.data, results.settings)
    budget = budget_line(run, results, data)
    lines += [
        f"Data: {json.dumps(data)}; seeds: {results.seeds}; training defaults: {json.dumps(recipe.train_defaults)}.",
        "",
    ]
    if results.reused:
        lines += [
            "Trained once for another run with the same configuration and seed, and reused here (`compact run "
            f"--reuse`): {'; '.join(results.reused)}.",
            "",
        ]
    lines += [
        "## Models compared (Tables 3-4 style)",
        "",
        budget,
        "",
        table["markdown"],
        "",
    ]
    if exits["markdown"]:
        lines += ["## Error of every exit (Table 6 style)", "", budget, "", exits["markdown"], ""]
    claim_rows = evaluate_claims(recipe.claims, results.models)
    claim_lines = claims_markdown(claim_rows, recipe.claims, bool(smoke))
    if claim_lines:
        lines += [*claim_lines[:2], budget, "", *claim_lines[2:]]
    curves = curves_data(run, recipe, results.seeds, results.models)
    title = f"{recipe.name}" + (" (SMOKE RUN)" if smoke else "") + (" (INCOMPLETE)" if results.missing else "")
    plots = {axis: pareto_data(results, axis) for axis in ("macs", "latency")}
    for axis, data in plots.items():  # cascades are drawn beside the models, off the front (a sweep, not a model)
        data["series"] += cascade_series(results, axis)
    lines += cascades_markdown(results, budget)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str | None] = {}
    for axis, data in plots.items():
        for path in draw(data, title, out / f"pareto_{axis}"):
            files[path.name] = None  # written by draw
    for path in draw_curves(curves, title, out / "curves"):
        files[path.name] = None
    images = ["![error vs MACs](pareto_macs.png)", "", "![error vs latency](pareto_latency.png)", ""]
    if any(s["kind"] == "cascade" for s in plots["latency"]["series"]):
        images += [
            "The cascades' latency is measured with sessions that do not spin-wait between runs, the single "
            "models' with ONNX Runtime's default spinning threads (see each cascade's section).",
            "",
        ]
    curve_lines = ["## Learning curves", "", budget, "", "![test error per epoch](curves.png)", ""]
    fronts = [line for data in plots.values() for line in _front_table(data)]
    markdown = "\n".join(lines + ["## Pareto plots", "", *images, *fronts] + curve_lines)
    # the same without images, for places that show a Markdown text without the files beside it (CI job summaries)
    note = (
        "The Pareto plots (`pareto_macs.png`, `pareto_latency.png`) and learning curves (`curves.png`), with SVG "
        "versions, are in the report folder."
    )
    summary = "\n".join(lines + ["## Pareto fronts", "", note, "", *fronts] + curve_lines[:4])
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
    files["curves.json"] = _json(curves)
    files["claims.json"] = _json({"smoke": bool(smoke), "claims": recipe.claims, "comparisons": claim_rows})
    for name, text in files.items():
        if text is not None:
            write_text(out / name, text)
    return {
        "dir": str(out),
        "files": list(files),
        "markdown": markdown,
        "complete": not results.missing,
        "plots": plots,
        "claims": claim_rows,
        "curves": curves,
    }


def budget_line(run: Path, results: RunResults, data: dict[str, Any]) -> str:
    """What the numbers below cost: training and test images, epochs per entry (as trained), seeds."""
    epochs: dict[int, list[str]] = {}
    used: dict[str, set[int]] = {"train_images": set(), "test_images": set()}
    for entry in results.recipe.entries:
        counted = False
        for seed in results.seeds:
            summary = try_read_json_object(entry_dir(run, entry.name, seed) / "summary.json") or {}
            for key, seen in used.items():
                if _count(summary.get(key)):
                    seen.add(summary[key])
            n = summary.get("epochs")
            if _count(n) and not counted:
                epochs.setdefault(n, []).append(entry.name)
                counted = True
    per = "; ".join(f"{n} epoch{'s' if n != 1 else ''}: {', '.join(names)}" for n, names in sorted(epochs.items()))
    done = results.finished
    if any(len(v) < len(results.seeds) for v in done.values()):  # a partial run: say which seeds each entry has
        per += "; seeds finished so far: " + ", ".join(
            f"{name} {'/'.join(map(str, v)) if v else 'none'}" for name, v in done.items()
        )
    train = _images(used["train_images"], data.get("subset"))
    test = _images(used["test_images"], data.get("test_subset"))
    smoke = " SMOKE RUN." if results.settings.get("smoke") else ""
    return (
        f"*Budget: {train} training images of {data['name']}, {test} test images, {len(results.seeds)} seed(s) "
        f"{results.seeds}; {per or 'no finished entry'}.{smoke}*"
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _images(used: set[int], asked: Any) -> str:
    """The number of images the runs used (their summaries say), else the recipe's subset ("all" if none):
    a subset larger than the data set trains on fewer images than it names."""
    if len(used) == 1:
        return f"{next(iter(used)):,}"
    if used:
        return f"{min(used):,} to {max(used):,} (they differ between runs)"
    return f"{asked:,}" if asked else "all"


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
