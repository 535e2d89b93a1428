"""Comparison recipes: a YAML file that says what to train, probe, prune and profile, validated on load.

::

    name: demo
    data: {name: fashion-mnist, subset: 5000, test_subset: 2000}   # DataOptions keys
    seeds: [0, 1, 2]
    train_defaults: {epochs: 3, batch_size: 128}                    # TrainConfig keys for every training
    profile: {onnx: true, batches: [1, 64], rounds: 10, repeats: 3}
    entries:
      - name: mwbp                      # a network trained by a BP method; every output is exported
        train: {model: cifar_resnet20, method: mwbp, exits: 3}
      - name: standard-probe            # heads on the frozen trunk of another entry (paper footnote 3)
        probe: {of: standard, exits_like: mwbp, epochs: 2}
      - name: deep-l1                   # a deeper network pruned to the MACs of another entry's output
        prune: {from: deep, method: l1, match: "mwbp:final", finetune: {epochs: 2}}

Every entry runs once per seed. ``match`` names an entry and one of its outputs (``final`` or an index).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compact._resources import resolve
from compact.engine.config import PLACEMENT_KEYS, TrainConfig, read_yaml
from compact.errors import CompactError

TOP_KEYS = {"name", "description", "data", "seeds", "train_defaults", "profile", "entries", "notes"}
DATA_KEYS = {"name", "data_dir", "download", "subset", "test_subset", "image_size", "workers"}
PROFILE_KEYS = {"onnx", "batches", "rounds", "repeats", "threads"}
KINDS = ("train", "probe", "prune")
PROBE_KEYS = {"of", "exits_like", "head", *PLACEMENT_KEYS}
PRUNE_KEYS = {
    "from",
    "method",
    "match",
    "macs_ratio",
    "target_macs",
    "recipe",
    "allocation",
    "max_layer_ratio",
    "round_to",
    "finetune",
}


@dataclass
class Entry:
    name: str
    kind: str
    spec: dict[str, Any]
    label: str

    def references(self) -> list[str]:
        """Names of the entries this one needs first."""
        if self.kind == "probe":
            return [r for r in (self.spec["of"], self.spec.get("exits_like")) if r]
        if self.kind == "prune":
            refs = [self.spec["from"]]
            if self.spec.get("match"):
                refs.append(str(self.spec["match"]).split(":")[0])
            return refs
        return []


@dataclass
class Recipe:
    name: str
    data: dict[str, Any]
    seeds: list[int]
    train_defaults: dict[str, Any]
    profile: dict[str, Any]
    entries: list[Entry]
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict, repr=False)

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def ordered(self) -> list[Entry]:
        """Entries in an order where every entry comes after the entries it refers to."""
        done: list[Entry] = []
        state: dict[str, str] = {}

        def visit(e: Entry, path: list[str]) -> None:
            if state.get(e.name) == "done":
                return
            if state.get(e.name) == "visiting":
                raise CompactError(
                    f"recipe {self.name}: entries refer to each other in a cycle: {' -> '.join(path + [e.name])}"
                )
            state[e.name] = "visiting"
            for ref in e.references():
                visit(self.entry(ref), path + [e.name])
            state[e.name] = "done"
            done.append(e)

        for e in self.entries:
            visit(e, [])
        return done


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CompactError(f"{where} must be a mapping, got {type(value).__name__}")
    return {str(k).replace("-", "_"): v for k, v in value.items()}


def _check_keys(values: dict[str, Any], valid: set[str], where: str) -> None:
    unknown = sorted(set(values) - valid)
    if unknown:
        raise CompactError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")


def parse_recipe(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    """Validate a recipe mapping; every error names the key and the entry."""
    raw = _mapping(raw, where)
    _check_keys(raw, TOP_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CompactError(f"{where}: 'name' (a non-empty string) is required")
    data = _mapping(raw.get("data"), f"{where}: data")
    _check_keys(data, DATA_KEYS, f"{where}: data")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise CompactError(f"{where}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    defaults = _mapping(raw.get("train_defaults"), f"{where}: train_defaults")
    _check_keys(defaults, set(TrainConfig.keys()) - {"model", "data", "method"}, f"{where}: train_defaults")
    profile = {
        "onnx": True,
        "batches": [1, 64],
        "rounds": 10,
        "repeats": 3,
        "threads": None,
        **_mapping(raw.get("profile"), f"{where}: profile"),
    }
    _check_keys(profile, PROFILE_KEYS, f"{where}: profile")
    if not isinstance(profile["batches"], list) or not all(isinstance(b, int) and b > 0 for b in profile["batches"]):
        raise CompactError(f"{where}: profile.batches must be a list of positive integers, got {profile['batches']!r}")
    entries_raw = raw.get("entries")
    if not isinstance(entries_raw, list) or not entries_raw:
        raise CompactError(f"{where}: 'entries' must be a non-empty list")
    entries: list[Entry] = []
    for i, item in enumerate(entries_raw):
        item = _mapping(item, f"{where}: entries[{i}]")
        ename = item.get("name")
        if not isinstance(ename, str) or not ename or "/" in ename or ":" in ename:
            raise CompactError(f"{where}: entries[{i}] needs a 'name' (no '/' or ':'), got {ename!r}")
        at = f"{where}: entry {ename!r}"
        if any(e.name == ename for e in entries):
            raise CompactError(f"{at} is defined twice")
        kinds = [k for k in KINDS if k in item]
        if len(kinds) != 1:
            raise CompactError(f"{at} needs exactly one of {', '.join(KINDS)}")
        _check_keys(item, {"name", "label", *KINDS}, at)
        kind = kinds[0]
        spec = _mapping(item[kind], f"{at}: {kind}")
        _validate(kind, spec, defaults, data, at)
        entries.append(Entry(ename, kind, spec, str(item.get("label", ename))))
    recipe = Recipe(name, data, seeds, defaults, profile, entries, str(raw.get("description", "")), raw)
    names = {e.name for e in entries}
    for e in entries:
        for ref in e.references():
            if ref not in names:
                raise CompactError(
                    f"{where}: entry {e.name!r} refers to unknown entry {ref!r}; entries: {', '.join(sorted(names))}"
                )
        if e.kind == "prune" and e.spec.get("match"):
            ref, _, which = str(e.spec["match"]).partition(":")
            if recipe.entry(ref).kind == "prune" and which not in ("", "final"):
                raise CompactError(f"{where}: entry {e.name!r}: a pruned entry has only its final output to match")
    recipe.ordered()  # cycles
    return recipe


def _validate(kind: str, spec: dict[str, Any], defaults: dict[str, Any], data: dict[str, Any], at: str) -> None:
    if kind == "train":
        # build the TrainConfig once: unknown keys and bad values are reported now, not mid-run
        TrainConfig.from_dict({**defaults, "data": data.get("name", "fashion-mnist"), **spec}, f"{at}: train")
    elif kind == "probe":
        extra = set(spec) - PROBE_KEYS
        schedule = {k: spec[k] for k in extra}
        _check_keys({k: None for k in extra}, set(TrainConfig.keys()), f"{at}: probe")
        if "of" not in spec:
            raise CompactError(f"{at}: probe needs 'of' (the trained entry whose trunk is frozen)")
        TrainConfig.from_dict({"model": "x", **schedule}, f"{at}: probe")
    else:
        _check_keys(spec, PRUNE_KEYS, f"{at}: prune")
        for key in ("from", "method"):
            if key not in spec:
                raise CompactError(f"{at}: prune needs {key!r}")
        from compact.prune import PRUNERS

        PRUNERS.get(spec["method"])
        targets = [k for k in ("match", "macs_ratio", "target_macs", "recipe") if spec.get(k) is not None]
        if len(targets) != 1:
            raise CompactError(f"{at}: prune needs exactly one of match, macs_ratio, target_macs, recipe")
        finetune = _mapping(spec.get("finetune"), f"{at}: prune.finetune")
        _check_keys(finetune, set(TrainConfig.keys()), f"{at}: prune.finetune")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (YAML, loaded with ``safe_load``), or a shipped recipe by name."""
    path = resolve("recipe", path)
    return parse_recipe(read_yaml(path, "recipe"), str(path))
