"""Gather the stored results of a recipe run (metrics, pruning reports, profiles); never measures anything."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compact.errors import CompactError
from compact.recipes.runner import DONE, entry_dir, seeds_of
from compact.recipes.schema import Recipe, parse_recipe

#: methods whose exits are trained by the method itself and belong in the Table 3-style comparison
MULTIWAY = ("mwbp", "reverse-mwbp", "naive-mwbp", "naive-reverse-mwbp")


@dataclass
class Model:
    """One model of the comparison (an output of a network, or a pruned network), over seeds."""

    entry: str
    label: str
    kind: str  # train | probe | prune
    method: str
    output: int | None
    num_outputs: int
    depth: int | None
    errors: list[float] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    macs: list[int] = field(default_factory=list)
    macs_total: list[int] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=dict)  # "onnxruntime/1" -> medians over seeds

    @property
    def name(self) -> str:
        if self.output is None or self.num_outputs == 1:
            return self.label
        if self.output == self.num_outputs - 1:
            return f"{self.label}, final"
        return f"{self.label}, exit {self.output}"

    @property
    def is_final(self) -> bool:
        return self.output is None or self.output == self.num_outputs - 1

    def stat(self, values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    def summary(self) -> dict[str, Any]:
        err, err_std = self.stat(self.errors)
        out = {
            "model": self.name,
            "entry": self.entry,
            "kind": self.kind,
            "method": self.method,
            "output": self.output,
            "depth": self.depth,
            "seeds": len(self.errors),
            "test_error_pct": err,
            "test_error_std": err_std,
            "params": self.stat(self.params)[0],
            "macs_conv_linear": self.stat(self.macs)[0],
            "macs": self.stat(self.macs_total)[0],
        }
        for key, values in sorted(self.latency.items()):
            out[f"latency_ms_{key.replace('/', '_b')}"] = self.stat(values)[0]
        return out


@dataclass
class RunResults:
    recipe: Recipe
    settings: dict[str, Any]
    models: list[Model]
    missing: list[str]
    seeds: list[int]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CompactError(f"cannot read {path}: {exc}") from exc


def _add_profile(model: Model, profile_path: Path, missing: list[str]) -> None:
    if not profile_path.is_file():
        missing.append(f"{profile_path} (not profiled)")
        return
    prof = _read(profile_path)
    model.params.append(prof["params"])
    model.macs.append(prof["macs_conv_linear"])
    model.macs_total.append(prof["macs"])
    for runtime, by_batch in prof.get("latency_ms", {}).items():
        for batch, timing in by_batch.items():
            model.latency.setdefault(f"{runtime}/{batch}", []).append(timing["median"])


def collect(run: Path) -> RunResults:
    """Every model of the run with its errors and profiles over seeds; ``missing`` lists what is absent."""
    stamp = _read(run / "recipe.json")
    recipe = parse_recipe(stamp["recipe"], str(run / "recipe.json"))
    models: dict[tuple[str, int | None], Model] = {}
    missing: list[str] = []
    seeds = seeds_of(recipe, bool(stamp.get("settings", {}).get("smoke")))
    for entry in recipe.entries:
        for seed in seeds:
            folder = entry_dir(run, entry.name, seed)
            if not (folder / DONE).is_file():
                missing.append(f"{entry.name} seed {seed} (not finished)")
                continue
            if entry.kind == "prune":
                report = _read(folder / "prune.json")
                m = models.setdefault(
                    (entry.name, None), Model(entry.name, entry.label, "prune", report["method"], None, 1, None)
                )
                m.errors.append(report["test_error_pct"]["final"])
                _add_profile(m, folder / "pruned.profile.json", missing)
                continue
            summary = _read(folder / "summary.json")
            outputs = summary["outputs"]
            for row in outputs:
                k = row["output"]
                if row["test_error_pct"] is None:
                    continue  # an output the method does not train (standard BP's heads)
                m = models.setdefault(
                    (entry.name, k),
                    Model(entry.name, entry.label, entry.kind, summary["method"], k, len(outputs), row["depth"]),
                )
                m.errors.append(row["test_error_pct"])
                _add_profile(m, folder / "exports" / f"output{k}.profile.json", missing)
    return RunResults(recipe, stamp.get("settings", {}), list(models.values()), missing, seeds)
