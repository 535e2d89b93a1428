"""Threshold sweeps of a cascade: error, exit shares, exact mean MACs and measured latency per threshold,
and the choice of an operating point on held-out images.

Errors and exit shares come from the logits of every exit, computed once by running the cascade to the
end (:meth:`Cascade.run_all`) and then decided per threshold by :func:`~compact.cascade.runtime.decide`,
the same rule :meth:`Cascade.predict` applies (:func:`check_decisions` compares them on real runs). Mean
MACs are exact: the MACs of the segments and heads each sample ran, from the manifest. Latency is
measured: the real cascade at each threshold on the same images, timed interleaved with the static exits
(the profiler's harness: rounds in rotating order, median).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from compact.cascade.runtime import Cascade, check_threshold, decide, fit_temperatures
from compact.errors import CompactError

MAX_THRESHOLDS = 1000


def parse_thresholds(text: str) -> list[float]:
    """``LOW:HIGH:N`` (N evenly spaced values, ends included) or a comma-separated list, each in [0, 1]."""
    text = str(text).strip()
    m = re.fullmatch(r"([^:,]+):([^:,]+):([^:,]+)", text)
    try:
        if m:
            lo, hi, n = float(m[1]), float(m[2]), int(m[3])
            if not 1 <= n <= MAX_THRESHOLDS:
                raise CompactError(f"--thresholds {text!r}: the count must be in 1..{MAX_THRESHOLDS}, got {n}")
            if lo > hi:
                raise CompactError(f"--thresholds {text!r}: LOW must not exceed HIGH")
            values = [lo] if n == 1 else [float(v) for v in np.linspace(lo, hi, n)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except CompactError:
        raise
    except ValueError:  # float() and int() of what is not a number
        raise CompactError(
            f"--thresholds {text!r} is not LOW:HIGH:N (e.g. 0.5:0.999:50) or a list (e.g. 0.6,0.8,0.95)"
        ) from None
    if not values or len(values) > MAX_THRESHOLDS:
        raise CompactError(f"--thresholds {text!r}: give 1..{MAX_THRESHOLDS} values")
    for v in values:
        if not np.isfinite(v) or not 0.0 <= v <= 1.0:
            raise CompactError(f"--thresholds {text!r}: {v} is outside [0, 1] (thresholds are confidences)")
    return [round(check_threshold(v), 6) for v in values]


def sweep_rows(
    cascade: Cascade,
    logits: Sequence[np.ndarray],
    labels: np.ndarray,
    thresholds: Sequence[float],
    rule: str = "maxprob",
    temperatures: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One row per threshold: error (%), share of samples per exit, mean MACs per image (total and
    conv+linear)."""
    labels = np.asarray(labels)
    cost = np.asarray(cascade.exit_macs("total"), dtype=np.float64)
    cost_cl = np.asarray(cascade.exit_macs("conv_linear"), dtype=np.float64)
    rows = []
    for t in thresholds:
        pred, used = decide(logits, t, rule, temperatures)
        counts = np.bincount(used, minlength=cascade.num_exits)
        rows.append(
            {
                "threshold": float(t),
                "error_pct": round(100.0 * float((pred != labels).mean()), 4),
                "exit_share": [round(float(c) / len(labels), 6) for c in counts],
                "mean_macs": float(cost[used].mean()),
                "mean_macs_conv_linear": float(cost_cl[used].mean()),
            }
        )
    return rows


def static_rows(cascade: Cascade, logits: Sequence[np.ndarray], labels: np.ndarray) -> list[dict[str, Any]]:
    """Every exit used alone (its own graph), final last: error and MACs."""
    macs, macs_cl = cascade.static_macs("total"), cascade.static_macs("conv_linear")
    last = len(logits) - 1
    return [
        {
            "output": i,
            "name": "final" if i == last else f"exit {i}",
            "error_pct": round(100.0 * float((z.argmax(1) != labels).mean()), 4),
            "macs": macs[i],
            "macs_conv_linear": macs_cl[i],
        }
        for i, z in enumerate(logits)
    ]


def check_decisions(
    cascade: Cascade,
    x: np.ndarray,
    logits: Sequence[np.ndarray],
    thresholds: Sequence[float],
    rule: str = "maxprob",
    temperatures: Sequence[float] | None = None,
) -> int:
    """Run the real cascade on ``x`` at each threshold and compare with the decisions made from ``logits``
    (of the same ``x``); returns the number of samples that differ (float rounding between batch sizes can
    flip a sample whose confidence sits on a threshold; anything more is an error)."""
    differ = 0
    for t in thresholds:
        pred, used = cascade.predict(x, t, rule, temperatures)
        want_pred, want_used = decide([z[: len(x)] for z in logits], t, rule, temperatures)
        differ += int(((pred != want_pred) | (used != want_used)).sum())
    if differ > max(1, len(x) * len(thresholds) // 1000):
        raise CompactError(f"the cascade's decisions differ from its exits' logits for {differ} samples")
    return differ


def measure_latency(
    cascade: Cascade,
    x: np.ndarray,
    thresholds: Sequence[float],
    batch: int,
    rule: str = "maxprob",
    temperatures: Sequence[float] | None = None,
    rounds: int = 5,
    repeats: int = 1,
) -> dict[str, dict[str, float]]:
    """Measured milliseconds per image (median over rounds) of the cascade at each threshold and of each
    static output, at batch 1 (the images one by one) and at ``batch``, on the images ``x``; keys
    ``"t=<threshold>"`` and ``"static <i>"``, values ``{"1": ms, str(batch): ms}``."""
    from compact.profile.latency import time_interleaved

    n = len(x)
    runners: dict[str, Any] = {}
    for t in thresholds:
        for b in (1, batch):
            runners[f"t={t}|{b}"] = lambda t=t, b=b: cascade.predict(x, t, rule, temperatures, batch_size=b)
    for i in range(cascade.num_exits):
        for b in (1, batch):
            chunks = [x[s : s + b] for s in range(0, n, b)]
            runners[f"static {i}|{b}"] = lambda i=i, chunks=chunks: [cascade.run_static(i, c) for c in chunks]
    # no pause and no untimed call before each block: one call is a whole pass over the images, and the
    # cascade's sessions do not spin-wait, so nothing of one candidate spills into the next
    timings = time_interleaved(runners, rounds=rounds, repeats=repeats, warmup=1, settle_ms=0)
    out: dict[str, dict[str, float]] = {}
    for key, timing in timings.items():
        name, b = key.rsplit("|", 1)
        out.setdefault(name, {})[b] = round(timing.median_ms / n, 5)
    return out


def operating_point(
    rows: Sequence[dict[str, Any]], target_error: float | None = None, budget_macs: float | None = None
) -> dict[str, Any]:
    """The row (of a validation sweep) to use: with ``target_error`` (%), the cheapest threshold whose error
    is at most the target; with ``budget_macs``, the most accurate threshold whose mean MACs fit."""
    if (target_error is None) == (budget_macs is None):
        raise CompactError("give exactly one of --target-error and --budget-macs")
    if target_error is not None:
        ok = [r for r in rows if r["error_pct"] <= target_error]
        if not ok:
            best = min(rows, key=lambda r: (r["error_pct"], r["mean_macs"]))
            raise CompactError(
                f"no threshold reaches {target_error}% error on the validation images; the closest is "
                f"threshold {best['threshold']} at {best['error_pct']}%"
            )
        return min(ok, key=lambda r: (r["mean_macs"], r["error_pct"]))
    ok = [r for r in rows if r["mean_macs"] <= budget_macs]
    if not ok:
        cheapest = min(rows, key=lambda r: r["mean_macs"])
        raise CompactError(
            f"no threshold fits {budget_macs:,.0f} MACs per image on the validation images; the cheapest is "
            f"threshold {cheapest['threshold']} at {cheapest['mean_macs']:,.0f}"
        )
    return min(ok, key=lambda r: (r["error_pct"], r["mean_macs"]))


def study(
    cascade: Cascade,
    test: tuple[np.ndarray, np.ndarray],
    thresholds: Sequence[float],
    *,
    rule: str = "maxprob",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    temperature: bool = False,
    target_error: float | None = None,
    budget_macs: float | None = None,
    latency_images: int = 256,
    batch: int = 64,
    rounds: int = 5,
    repeats: int = 1,
    check_images: int = 512,
) -> dict[str, Any]:
    """The whole evaluation of a cascade, JSON-ready: the sweep on the test images, the static outputs, the
    measured latency (``latency_images`` > 0), and, with a validation set, fitted temperatures and the
    operating point chosen on it (``target_error`` or ``budget_macs``) with its test figures."""
    x, y = test
    if validation is None and (temperature or target_error is not None or budget_macs is not None):
        raise CompactError(
            "choosing a threshold or fitting temperatures needs held-out validation images, and this run "
            "trained on every training image (train with a subset to keep some out)"
        )
    temps = None
    val_logits = None
    if validation is not None:
        val_logits = cascade.run_all(validation[0])
        if temperature:
            temps = fit_temperatures(val_logits, validation[1])
    logits = cascade.run_all(x)
    check = min(check_images, len(x))
    differ = check_decisions(cascade, x[:check], logits, thresholds[:: max(1, len(thresholds) // 5)], rule, temps)
    rows = sweep_rows(cascade, logits, y, thresholds, rule, temps)
    result: dict[str, Any] = {
        "rule": rule,
        "temperatures": temps,
        "test_images": int(len(x)),
        "validation_images": int(len(validation[0])) if validation is not None else 0,
        "exit_macs": cascade.exit_macs("total"),
        "exit_macs_conv_linear": cascade.exit_macs("conv_linear"),
        "rows": rows,
        "static": static_rows(cascade, logits, y),
        "decision_check": {"images": check, "differing": differ},
    }
    if target_error is not None or budget_macs is not None:
        val_rows = sweep_rows(cascade, val_logits, validation[1], thresholds, rule, temps)
        chosen = operating_point(val_rows, target_error, budget_macs)
        test_row = sweep_rows(cascade, logits, y, [chosen["threshold"]], rule, temps)[0]
        result["operating_point"] = {
            "target_error_pct": target_error,
            "budget_macs": budget_macs,
            "threshold": chosen["threshold"],
            "validation": chosen,
            "test": test_row,
        }
    if latency_images > 0:
        sample = x[: min(latency_images, len(x))]
        timed = [r["threshold"] for r in rows]
        lat = measure_latency(cascade, sample, timed, batch, rule, temps, rounds, repeats)
        for r in rows:
            r["latency_ms_per_image"] = lat[f"t={r['threshold']}"]
        for s in result["static"]:
            s["latency_ms_per_image"] = lat[f"static {s['output']}"]
        result["latency"] = {
            "images": int(len(sample)),
            "batches": [1, batch],
            "rounds": rounds,
            "repeats": repeats,
            "runtime": "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL",
            "statistic": "median over interleaved rounds of (time of one pass over the images) / images",
        }
    return result
