"""Gather the stored results of a recipe run (metrics, pruning reports, profiles); never measures anything."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compact._jsonfile import read_json_object
from compact._numbers import is_count, is_finite_number
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
    failed: list[int] = field(default_factory=list)  # seeds whose test error is not a number (a diverged run)
    by_seed: dict[int, float] = field(default_factory=dict)  # test error of each seed (paired comparisons)

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

    def latency_ms(self, key: str) -> float | None:
        """The median over seeds of the per-seed latency medians for ``key`` ("onnxruntime/1"): a median,
        not a mean, so one seed timed in a slow phase of a shared machine does not move the figure."""
        values = self.latency.get(key)
        return statistics.median(values) if values else None

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
            "failed_seeds": list(self.failed),
            "params": self.stat(self.params)[0],
            "macs_conv_linear": self.stat(self.macs)[0],
            "macs": self.stat(self.macs_total)[0],
        }
        for key in sorted(self.latency):
            out[f"latency_ms_{key.replace('/', '_b')}"] = self.latency_ms(key)
        return out


@dataclass
class RunResults:
    recipe: Recipe
    settings: dict[str, Any]
    models: list[Model]
    missing: list[str]
    seeds: list[int]
    failed: list[str] = field(default_factory=list)
    #: cascade entries: name -> {"label", "of", "by_seed": {seed: the stored study}}
    cascades: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: "<entry> seed <s> <- <source>" for every trained entry taken from another run (compact run --reuse)
    reused: list[str] = field(default_factory=list)
    #: entry -> the seeds it has finished (``done.json``), in the run's seed order
    finished: dict[str, list[int]] = field(default_factory=dict)


def _field(data: dict[str, Any], key: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    """``data[key]`` if present and of ``kind``, else a :class:`CompactError` naming the file and key."""
    value = data.get(key)
    if key not in data or not isinstance(value, kind) or isinstance(value, bool):
        raise CompactError(f"{path} is damaged or from another version: {key!r} is missing or of the wrong type")
    return value


def _error_value(value: Any, path: Path) -> float | None:
    """A test error as a finite float, or None for a failed (NaN, infinite, missing) one; a number outside
    0..100% is a damaged file, never a table entry."""
    if is_finite_number(value):
        if not 0 <= value <= 100:
            raise CompactError(f"{path} is damaged: test error {value!r} lies outside 0..100%")
        return float(value)
    return None


def _add_profile(model: Model, profile_path: Path, missing: list[str], what: str) -> None:
    if not profile_path.is_file():
        missing.append(f"{what} (not profiled)")  # named as the run names it, not by a path of this machine
        return
    prof = read_json_object(profile_path, "remove it and run compact run again to profile it again")
    for key, values in (("params", model.params), ("macs_conv_linear", model.macs), ("macs", model.macs_total)):
        count = _field(prof, key, profile_path, int)
        if count < 0:
            raise CompactError(f"{profile_path} is damaged: {key!r} is negative ({count})")
        values.append(count)
    latency = prof.get("latency_ms", {})
    if not isinstance(latency, dict):
        raise CompactError(f"{profile_path} is damaged: 'latency_ms' must be a mapping")
    for runtime, by_batch in latency.items():
        if not isinstance(by_batch, dict):
            raise CompactError(f"{profile_path} is damaged: latency_ms.{runtime} must be a mapping")
        for batch, timing in by_batch.items():
            median = timing.get("median") if isinstance(timing, dict) else None
            if not is_finite_number(median) or median < 0 or not str(batch).isdigit():
                raise CompactError(f"{profile_path} is damaged: latency_ms.{runtime}.{batch} has no median")
            model.latency.setdefault(f"{runtime}/{batch}", []).append(median)


def _check_study(result: dict[str, Any], path: Path) -> None:
    """A stored cascade study has the fields the report reads, with numbers where numbers belong."""
    rows, static = _field(result, "rows", path, list), _field(result, "static", path, list)
    _field(result, "rule", path, str)
    if not rows or not static:
        raise CompactError(f"{path} is damaged: no sweep rows or static outputs")
    width = None
    for r in rows + static:
        ok = isinstance(r, dict) and is_finite_number(r.get("error_pct"))
        lat = r.get("latency_ms_per_image", {}) if ok else None
        ok = ok and isinstance(lat, dict) and all(str(b).isdigit() and is_finite_number(v) for b, v in lat.items())
        if ok and "threshold" in r:
            shares = r.get("exit_share")
            numbers = all(is_finite_number(r.get(k)) for k in ("threshold", "mean_macs", "mean_macs_conv_linear"))
            ok = numbers and isinstance(shares, list) and all(is_finite_number(v) for v in shares)
            ok = ok and width in (None, len(shares))
            width = len(shares) if ok else width
        elif ok:
            ok = (
                isinstance(r.get("name"), str)
                and isinstance(r.get("output"), int)
                and all(is_finite_number(r.get(k)) for k in ("macs", "macs_conv_linear"))
            )
        if not ok:
            raise CompactError(f"{path} is damaged or from another version: a sweep or static row is malformed")
    _check_study_fields(result, path, width)


def _check_study_fields(result: dict[str, Any], path: Path, width: int | None) -> None:
    """The study's other fields that the report prints: one exit cost per share column, counts, the timing
    settings and the operating point."""
    from compact.cascade.runtime import RULES

    def damaged(what: str) -> CompactError:
        return CompactError(f"{path} is damaged or from another version: {what}")

    if result["rule"] not in RULES:
        raise damaged(f"'rule' must be one of {', '.join(RULES)}")
    macs = result.get("exit_macs")
    if not isinstance(macs, list) or len(macs) != width or not all(is_count(v) for v in macs):
        raise damaged("'exit_macs' must give one MAC count per exit of the sweep")
    if not is_count(result.get("test_images"), 1):
        raise damaged("'test_images' must be a positive count")
    temps = result.get("temperatures")
    if temps is not None and not (isinstance(temps, list) and all(is_finite_number(t) and t > 0 for t in temps)):
        raise damaged("'temperatures' must be null or a list of positive numbers")
    lat = result.get("latency")
    if lat is not None and not (
        isinstance(lat, dict)
        and is_count(lat.get("images"), 1)
        and is_count(lat.get("rounds"), 1)
        and isinstance(lat.get("batches"), list)
        and all(is_count(b, 1) for b in lat["batches"])
    ):
        raise damaged("'latency' must give the timed images, rounds and batch sizes")
    op = result.get("operating_point")
    if op is None:
        return

    def point(p: Any) -> bool:
        return isinstance(p, dict) and is_finite_number(p.get("error_pct")) and is_finite_number(p.get("mean_macs"))

    goals = [op.get(k) for k in ("target_error_pct", "budget_macs")] if isinstance(op, dict) else []
    if not (
        isinstance(op, dict)
        and is_finite_number(op.get("threshold"))
        and sum(is_finite_number(g) for g in goals) == 1
        and all(g is None or is_finite_number(g) for g in goals)
        and point(op.get("validation"))
        and point(op.get("test"))
        and is_count(result.get("validation_images"), 1)
    ):
        raise damaged("'operating_point' must give its goal, threshold, and validation and test figures")


def _add_error(m: Model, value: Any, seed: int, failed: list[str], path: Path) -> None:
    err = _error_value(value, path)
    if err is None:
        m.failed.append(seed)
        failed.append(f"{m.name} seed {seed} (test error {value!r})")
    else:
        m.errors.append(err)
        m.by_seed[seed] = err


def collect(run: Path) -> RunResults:
    """Every model of the run with its errors and profiles over seeds; ``missing`` lists what is absent,
    ``failed`` the models whose test error is not a number (they stay off every table mean and front)."""
    stamp = read_json_object(run / "recipe.json")
    recipe = parse_recipe(_field(stamp, "recipe", run / "recipe.json", dict), str(run / "recipe.json"))
    settings = stamp.get("settings", {})
    settings = settings if isinstance(settings, dict) else {}
    models: dict[tuple[str, int | None], Model] = {}
    missing: list[str] = []
    failed: list[str] = []
    seeds = seeds_of(recipe, bool(settings.get("smoke")))
    cascades: dict[str, dict[str, Any]] = {}
    reused: list[str] = []
    finished: dict[str, list[int]] = {e.name: [] for e in recipe.entries}
    for entry in recipe.entries:
        for seed in seeds:
            folder = entry_dir(run, entry.name, seed)
            if not (folder / DONE).is_file():
                missing.append(f"{entry.name} seed {seed} (not finished)")
                continue
            finished.setdefault(entry.name, []).append(seed)
            source = read_json_object(folder / DONE).get("reused_from")
            if isinstance(source, str):
                reused.append(f"{entry.name} seed {seed} <- {' '.join(source.split())[:200]}")
            if entry.kind == "cascade":
                path = folder / "cascade.json"
                result = read_json_object(path)
                _check_study(result, path)
                if "latency" not in result:
                    missing.append(f"{entry.name} seed {seed} (cascade not timed)")
                c = cascades.setdefault(entry.name, {"label": entry.label, "of": entry.spec["of"], "by_seed": {}})
                c["by_seed"][seed] = result
                continue
            if entry.kind == "prune":
                path = folder / "prune.json"
                report = read_json_object(path)
                method = _field(report, "method", path, str)
                errors = _field(report, "test_error_pct", path, dict)
                m = models.setdefault(
                    (entry.name, None), Model(entry.name, entry.label, "prune", method, None, 1, None)
                )
                _add_error(m, errors.get("final"), seed, failed, path)
                _add_profile(m, folder / "pruned.profile.json", missing, f"{entry.name} seed {seed}")
                continue
            path = folder / "summary.json"
            summary = read_json_object(path)
            outputs = _field(summary, "outputs", path, list)
            method = _field(summary, "method", path, str)
            seen: set[int] = set()
            for row in outputs:
                k = row.get("output") if isinstance(row, dict) else None
                if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(outputs) or k in seen:
                    raise CompactError(
                        f"{path} is damaged: every output needs its own 'output' index in 0..{len(outputs) - 1}"
                    )
                seen.add(k)
                if row.get("test_error_pct") is None:
                    continue  # an output the method does not train (standard BP's heads)
                depth = row.get("depth") if isinstance(row.get("depth"), int) else None
                m = models.setdefault(
                    (entry.name, k), Model(entry.name, entry.label, entry.kind, method, k, len(outputs), depth)
                )
                _add_error(m, row["test_error_pct"], seed, failed, path)
                profile = folder / "exports" / f"output{k}.profile.json"
                _add_profile(m, profile, missing, f"{entry.name} seed {seed} output {k}")
    return RunResults(recipe, settings, list(models.values()), missing, seeds, failed, cascades, reused, finished)
