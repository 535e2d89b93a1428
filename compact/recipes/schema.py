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
      - name: mwbp-cascade              # a multi-exit entry run as an early-exit cascade (compact.cascade)
        cascade: {of: mwbp, thresholds: "0.5:0.999:50"}

    claims:                             # the paper's claims the report tests (compact.report.claims)
      - {kind: exits, mwbp: mwbp, against: [standard-probe]}

Every entry runs once per seed. ``match`` names an entry and one of its outputs (``final`` or an index).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compact._resources import resolve
from compact.engine.config import MAX_SEED, PLACEMENT_KEYS, TrainConfig, read_yaml
from compact.errors import CompactError

TOP_KEYS = {"name", "description", "data", "seeds", "train_defaults", "profile", "entries", "notes", "claims"}
DATA_KEYS = {"name", "data_dir", "subset", "test_subset", "image_size", "workers", "augment", "flip",
             "in_chans"}  # fmt: skip
PROFILE_KEYS = {"onnx", "batches", "rounds", "repeats", "threads"}
KINDS = ("train", "probe", "prune", "cascade")
CASCADE_KEYS = {"of", "thresholds", "rule", "batch", "latency_images", "rounds"}
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
        # every value given is a reference, whatever its type (a null, empty or mapping value is an unknown entry)
        if self.kind == "probe":
            like = self.spec.get("exits_like")
            return [self.spec["of"], *([like] if like is not None else [])]
        if self.kind == "cascade":
            return [self.spec["of"]]
        if self.kind == "prune":
            refs = [self.spec["from"]]
            if self.spec.get("match") is not None:
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
    claims: list[dict[str, Any]] = field(default_factory=list)

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


#: names that become folder names: letters, digits, ``-``, ``_`` and ``.``, not starting with ``.``
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


def check_name(value: Any, where: str) -> str:
    """``value`` if it is a plain name usable as one path component (never ``..``, ``/``, ``:``, absolute)."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise CompactError(
            f"{where} must be a plain name (letters, digits, '-', '_', '.'; not starting with '.'; at most 100 "
            f"characters), got {value!r}"
        )
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CompactError(f"{where} must be a mapping, got {type(value).__name__}")
    return {str(k).replace("-", "_"): v for k, v in value.items()}


def _check_keys(values: dict[str, Any], valid: set[str], where: str) -> None:
    if "download" in values:
        raise CompactError(
            f"{where}: a recipe cannot ask to download (that writes into a folder the recipe names); downloading "
            "is the user's choice: compact run RECIPE --download --data-dir DIR"
        )
    unknown = sorted(set(values) - valid)
    if unknown:
        raise CompactError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")


def parse_recipe(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    """Validate a recipe mapping; every error names the key and the entry."""
    raw = _mapping(raw, where)
    _check_keys(raw, TOP_KEYS, where)
    name = check_name(raw.get("name"), f"{where}: 'name'")
    data = _mapping(raw.get("data"), f"{where}: data")
    _check_keys(data, DATA_KEYS, f"{where}: data")
    _check_data(data, f"{where}: data")
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not 0 < len(seeds) <= 100
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise CompactError(f"{where}: seeds must be a list of 1..100 distinct integers in 0..{MAX_SEED}, got {seeds!r}")
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
    _check_profile(profile, f"{where}: profile")
    entries_raw = raw.get("entries")
    if not isinstance(entries_raw, list) or not entries_raw:
        raise CompactError(f"{where}: 'entries' must be a non-empty list")
    entries: list[Entry] = []
    for i, item in enumerate(entries_raw):
        item = _mapping(item, f"{where}: entries[{i}]")
        ename = check_name(item.get("name"), f"{where}: entries[{i}].name")
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
        label = item.get("label", ename)
        if (
            not isinstance(label, str | int | float)
            or isinstance(label, bool)
            or not 0 < len(str(label)) <= 200
            or not str(label).isprintable()
            or "|" in str(label)
        ):
            # a label is a cell of the report's Markdown tables and a legend entry: one line, no column bar
            what = "one line of at most 200 characters without '|'"
            raise CompactError(f"{at}: label must be {what}, got {label!r}"[:300])
        entries.append(Entry(ename, kind, spec, str(label)))
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > 2000 or not description.replace("\n", " ").isprintable():
        raise CompactError(f"'description' must be a text of at most 2000 characters, got {description!r}"[:300])
    recipe = Recipe(name, data, seeds, defaults, profile, entries, description, raw)
    names = {e.name for e in entries}
    for e in entries:
        for ref in e.references():
            if not isinstance(ref, str) or ref not in names:
                raise CompactError(
                    f"{where}: entry {e.name!r} refers to unknown entry {ref!r}; entries: {', '.join(sorted(names))}"
                )
    recipe.ordered()  # cycles
    for e in entries:
        _check_references(recipe, e, f"{where}: entry {e.name!r}")
    from compact.report.claims import check_claims

    recipe.claims = check_claims(raw.get("claims"), {e.name: e for e in entries}, where)
    return recipe


def num_outputs(recipe: Recipe, entry: Entry) -> int:
    """How many outputs an entry's network has (final included), known from the recipe alone."""
    if entry.kind == "prune":
        return 1
    if entry.kind == "cascade":
        return num_outputs(recipe, recipe.entry(entry.spec["of"]))
    spec = entry.spec
    if entry.kind == "probe" and spec.get("exits_like"):
        return num_outputs(recipe, recipe.entry(spec["exits_like"]))
    if entry.kind == "train":
        spec = {**recipe.train_defaults, **spec}
    if spec.get("exits") is not None:
        return int(spec["exits"])
    for key in ("exit_blocks", "exit_layers", "exit_nodes"):
        if spec.get(key) is not None:
            return len(spec[key]) + 1
    return 1


def _check_references(recipe: Recipe, e: Entry, at: str) -> None:
    """What an entry refers to exists and has what the entry needs (checked before anything runs)."""
    if e.kind == "cascade":
        of = recipe.entry(e.spec["of"])
        if of.kind not in ("train", "probe") or num_outputs(recipe, of) < 2:
            raise CompactError(
                f"{at}: cascade 'of' must name a trained or probed entry with exits, {of.name!r} is not one"
            )
        return
    if e.kind == "probe":
        if recipe.entry(e.spec["of"]).kind != "train":
            raise CompactError(f"{at}: probe 'of' must name a trained entry, {e.spec['of']!r} is not one")
        like = e.spec.get("exits_like")
        if like is not None and num_outputs(recipe, recipe.entry(like)) < 2:
            raise CompactError(f"{at}: exits_like {like!r} has no auxiliary exits to copy")
    if e.kind != "prune":
        return
    if recipe.entry(e.spec["from"]).kind == "prune":
        raise CompactError(f"{at}: prune 'from' must name a trained entry, {e.spec['from']!r} is a pruned one")
    match = e.spec.get("match")
    if match is None:
        return
    if not isinstance(match, str):
        raise CompactError(f"{at}: match must be 'ENTRY', 'ENTRY:final' or 'ENTRY:K', got {match!r}")
    ref, _, which = match.partition(":")
    n = num_outputs(recipe, recipe.entry(ref))
    if which in ("", "final"):
        return
    if recipe.entry(ref).kind == "prune":
        raise CompactError(f"{at}: a pruned entry has only its final output to match, got {match!r}")
    if not re.fullmatch(r"[0-9]+", which) or int(which) >= n:
        raise CompactError(f"{at}: match {match!r}: {ref} has outputs 0..{n - 1} or 'final'")


def _check_data(data: dict[str, Any], at: str) -> None:
    from compact.data import DataOptions, check_dataset_name

    check_dataset_name(data.get("name", "fashion-mnist"), at)
    try:
        DataOptions(**{k: v for k, v in data.items()})
    except TypeError as exc:
        raise CompactError(f"{at}: {exc}") from None


def _check_profile(profile: dict[str, Any], at: str) -> None:
    def count(v: Any, low: int, high: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    if not isinstance(profile["onnx"], bool):
        raise CompactError(f"{at}: onnx must be true or false, got {profile['onnx']!r}")
    batches = profile["batches"]
    if not isinstance(batches, list) or not batches or not all(count(b, 1, 4096) for b in batches):
        raise CompactError(f"{at}: batches must be a non-empty list of integers in 1..4096, got {batches!r}")
    for key in ("rounds", "repeats"):
        if not count(profile[key], 1, 10_000):
            raise CompactError(f"{at}: {key} must be an integer in 1..10000, got {profile[key]!r}")
    if profile["threads"] is not None and not count(profile["threads"], 1, 1024):
        raise CompactError(f"{at}: threads must be null or an integer >= 1, got {profile['threads']!r}")


def _validate(kind: str, spec: dict[str, Any], defaults: dict[str, Any], data: dict[str, Any], at: str) -> None:
    from compact.models._builder import check_model_spec

    if kind == "train":
        _check_keys(spec, set(spec) - {"download"}, f"{at}: train")  # (refuses only download; TrainConfig the rest)
        # build the TrainConfig once: unknown keys and bad values are reported now, not mid-run
        cfg = TrainConfig.from_dict({**defaults, "data": data.get("name", "fashion-mnist"), **spec}, f"{at}: train")
        check_model_spec(cfg.model, cfg.model_kwargs)
        if cfg.init_from is not None:
            raise CompactError(f"{at}: init_from is not a recipe key (a recipe builds on its own entries)")
    elif kind == "probe":
        extra = set(spec) - PROBE_KEYS
        schedule = {k: spec[k] for k in extra}
        _check_keys(
            {k: None for k in extra}, set(TrainConfig.keys()) - {"model", "init_from", "method"}, f"{at}: probe"
        )
        if "of" not in spec:
            raise CompactError(f"{at}: probe needs 'of' (the trained entry whose trunk is frozen)")
        if spec.get("exits_like") is not None and any(spec.get(k) is not None for k in PLACEMENT_KEYS):
            raise CompactError(f"{at}: give exits_like or one of {', '.join(PLACEMENT_KEYS)}, not both")
        placement = {k: spec[k] for k in PLACEMENT_KEYS if k in spec}
        if spec.get("exits_like") is None and not placement:
            raise CompactError(f"{at}: probe needs exits_like or one of {', '.join(PLACEMENT_KEYS)}")
        TrainConfig.from_dict({"model": "x", **schedule, **placement}, f"{at}: probe")
    elif kind == "cascade":
        _check_cascade(spec, at)
    else:
        _check_keys(spec, PRUNE_KEYS, f"{at}: prune")
        for key in ("from", "method"):
            if key not in spec:
                raise CompactError(f"{at}: prune needs {key!r}")
        from compact.prune import PRUNERS, PruneSettings
        from compact.prune.base import parse_macs
        from compact.prune.pfec import recipe_names

        if not isinstance(spec["method"], str):
            raise CompactError(f"{at}: prune method must be a name, got {spec['method']!r}")
        PRUNERS.get(spec["method"])
        targets = [k for k in ("match", "macs_ratio", "target_macs", "recipe") if spec.get(k) is not None]
        if len(targets) != 1:
            raise CompactError(f"{at}: prune needs exactly one of match, macs_ratio, target_macs, recipe")
        ratio = spec.get("macs_ratio")
        if ratio is not None and (not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio < 1):
            raise CompactError(f"{at}: macs_ratio is the fraction of MACs kept, in (0, 1); got {ratio!r}")
        if spec.get("target_macs") is not None:
            parse_macs(spec["target_macs"])
        if spec.get("recipe") is not None and spec["recipe"] not in recipe_names():
            raise CompactError(f"{at}: unknown recipe {spec['recipe']!r}; valid: {', '.join(recipe_names())}")
        PruneSettings(
            allocation=spec.get("allocation", "uniform"),
            max_layer_ratio=spec.get("max_layer_ratio", 0.9),
            round_to=spec.get("round_to", 8),
        )
        finetune = _mapping(spec.get("finetune"), f"{at}: prune.finetune")
        _check_keys(finetune, set(TrainConfig.keys()) - {"model", "init_from", "method"}, f"{at}: prune.finetune")
        TrainConfig.from_dict({"model": "x", **finetune}, f"{at}: prune.finetune")


def _check_cascade(spec: dict[str, Any], at: str) -> None:
    from compact.cascade.runtime import RULES
    from compact.cascade.sweep import parse_thresholds

    _check_keys(spec, CASCADE_KEYS, f"{at}: cascade")
    if not isinstance(spec.get("of"), str):
        raise CompactError(f"{at}: cascade needs 'of' (the multi-exit entry to run as a cascade)")
    try:
        parse_thresholds(str(spec.get("thresholds", "0.5:0.999:50")))
    except CompactError as exc:
        raise CompactError(f"{at}: cascade thresholds: {str(exc).removeprefix('--thresholds ')}") from None
    if spec.get("rule", "maxprob") not in RULES:
        raise CompactError(f"{at}: cascade rule must be one of {', '.join(RULES)}, got {spec.get('rule')!r}")
    for key, default, low, high in (
        ("batch", 64, 1, 4096),
        ("latency_images", 256, 0, 100_000),
        ("rounds", 5, 1, 1000),
    ):
        v = spec.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise CompactError(f"{at}: cascade {key} must be an integer in {low}..{high}, got {v!r}")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (YAML, loaded with ``safe_load``), or a shipped recipe by name."""
    path = resolve("recipe", path)
    return parse_recipe(read_yaml(path, "recipe"), str(path))
