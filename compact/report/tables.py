"""Tables like the paper's Tables 3-4 (one column per model) and Table 6 (error of every exit per method)."""

from __future__ import annotations

import csv
import io
from typing import Any

from compact.report.collect import MULTIWAY, Model, RunResults


def comparison_models(results: RunResults) -> list[Model]:
    """Table 3-style columns: the unpruned networks, every pruned network, every exit of MW-BP networks."""
    chosen = []
    for m in results.models:
        if m.kind == "prune" or (m.kind == "train" and (m.is_final or m.method in MULTIWAY)):
            chosen.append(m)
    return sorted(chosen, key=lambda m: m.stat(m.macs)[0] or 0)


def exit_methods(results: RunResults) -> list[list[Model]]:
    """Table 6-style rows: for every network with auxiliary outputs, its outputs shallow to deep."""
    rows: dict[str, list[Model]] = {}
    for m in results.models:
        if m.kind in ("train", "probe") and m.num_outputs > 1:
            rows.setdefault(m.entry, []).append(m)
    return [sorted(r, key=lambda m: m.output) for r in rows.values()]


def _fmt_err(m: Model, seeds: int) -> str:
    """Mean ± std over the seeds ``m`` has; marked ``(n=k)`` when that is fewer than the run's ``seeds``."""
    mean, std = m.stat(m.errors)
    failed = f" (FAILED: seed {', '.join(map(str, m.failed))})" if m.failed else ""
    if mean is None:
        return "FAILED" if m.failed else "-"
    short = f" (n={len(m.errors)})" if len(m.errors) < seeds and not m.failed else ""
    return (f"{mean:.2f} ± {std:.2f}" if len(m.errors) > 1 else f"{mean:.2f}") + short + failed


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def _rows(models: list[Model], batches: list[int], seeds: int) -> list[tuple[str, list[str]]]:
    rows = [
        ("Params (M)", [_fmt(m.stat(m.params)[0], 1e6, 3) for m in models]),
        ("MACs, conv+linear (M)", [_fmt(m.stat(m.macs)[0], 1e6, 1) for m in models]),
        ("MACs, total (M)", [_fmt(m.stat(m.macs_total)[0], 1e6, 1) for m in models]),
    ]
    for runtime, short in (("onnxruntime", "ONNX Runtime"), ("pytorch", "PyTorch")):
        for b in batches:
            rows.append(
                (
                    f"{short} latency, batch {b} (ms)",
                    [_fmt(m.latency_ms(f"{runtime}/{b}"), 1, 2) for m in models],
                )
            )
    rows.append(("Test error (%)", [_fmt_err(m, seeds) for m in models]))
    return rows


def comparison_table(results: RunResults, batches: list[int]) -> dict[str, Any]:
    """Markdown, CSV and JSON of the Table 3-style comparison."""
    models = comparison_models(results)
    seeds = len(results.seeds)
    rows = _rows(models, batches, seeds)
    md = ["| | " + " | ".join(m.name for m in models) + " |", "|---|" + "---|" * len(models)]
    md += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    md.append("")
    md.append(
        f"Test error: mean ± standard deviation over {seeds} seed(s) (over n where marked: fewer finished). "
        "MACs are multiply-accumulates of one input. Latency: median over seeds of each model's median of "
        "interleaved rounds on this machine (see each model's profile)."
    )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["", *(m.name for m in models)])
    for name, cells in rows:
        w.writerow([name, *cells])
    return {"markdown": "\n".join(md), "csv": buf.getvalue(), "json": [m.summary() for m in models]}


def exits_table(results: RunResults) -> dict[str, Any]:
    """Markdown, CSV and JSON of the Table 6-style per-exit comparison.

    When every network has its outputs at the same layers, each column is one output and its header names
    the layer. When the layouts differ (Table 8: 2, 3, 5 or 10 outputs), a column ``layers`` gives each row's
    own layers, exits fill the columns from the left and every final output sits in the last column, so no
    column mixes final outputs with auxiliary exits."""
    rows = exit_methods(results)
    if not rows:
        return {"markdown": "", "csv": "", "json": []}
    width = max(r[0].num_outputs for r in rows)
    depths = [{m.depth for r in rows for m in r if m.output == k and m.depth is not None} for k in range(width)]
    uniform = len({r[0].num_outputs for r in rows}) == 1 and all(len(d) <= 1 for d in depths)
    if uniform:
        head = [f"output {k} (layer {next(iter(d), '?')})" for k, d in enumerate(depths)]
    else:
        head = ["layers", *(f"exit {k}" for k in range(width - 1)), "final"]
    md = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", *head])
    for r in rows:
        label = r[0].label + (" (probed)" if r[0].kind == "probe" and "probe" not in r[0].label.lower() else "")
        errs = {m.output: _fmt_err(m, len(results.seeds)) for m in r}
        if uniform:
            cells = [errs.get(k, "-") for k in range(width)]
        else:
            last = r[0].num_outputs - 1
            layers = ", ".join("?" if m.depth is None else str(m.depth) for m in r)
            cells = [layers, *(errs.get(k, "-") if k < last else "-" for k in range(width - 1)), errs.get(last, "-")]
        md.append(f"| {label} | " + " | ".join(cells) + " |")
        w.writerow([label, *cells])
    md.append("")
    md.append(
        "Test error (%) of every output. Exits of networks trained by standard BP are heads trained on the "
        "frozen trunk (paper footnote 3, `compact probe`); Joint and Relay BP heads are used as trained, as "
        "in the paper."
    )
    return {"markdown": "\n".join(md), "csv": buf.getvalue(), "json": [[m.summary() for m in r] for r in rows]}
