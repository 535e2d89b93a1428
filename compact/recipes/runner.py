"""`compact run`: every entry of a recipe, for every seed, into one output folder, resumable.

Layout of the output folder::

    recipe.json                      the recipe and the run's settings (smoke, overrides)
    <entry>/seed<s>/                 a run folder (train, probe) or a pruning job folder (prune)
    <entry>/seed<s>/exports/output<k>.safetensors (+ .profile.json)   every output of a trained network
    <entry>/seed<s>/pruned.profile.json                               the profile of a pruned model
    <entry>/seed<s>/cascade/, cascade.json   a cascade entry: the exported cascade and its threshold sweep
    <entry>/seed<s>/entry.json       marks the folder as this recipe's (only such folders are ever replaced)
    <entry>/seed<s>/done.json        written when the entry's training is finished: skipped next time
    <entry>/seed<s>/.running.lock    while a process runs the job (also in the output folder while profiling)

An entry that stopped half-way (a killed run) is resumed from its checkpoint. When every entry is done,
all models not yet profiled are profiled in one session, their latencies measured interleaved; then the
cascades not yet timed are timed (each in its own interleaved session, with its static exits).

Several processes may run on one output folder at once (e.g. ``--entries`` shares side by side, one core
each): a job held by another live process is skipped, as is a job whose entries it needs are not finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compact._atomic import refuse_links, write_text
from compact._jsonfile import read_json_object, try_read_json_object
from compact.engine.config import SMOKE, SMOKE_IMAGE_SIZE
from compact.errors import CompactError
from compact.recipes.locks import job_lock
from compact.recipes.schema import Entry, Recipe

SMOKE_PROFILE = {"batches": [1, 2], "rounds": 1, "repeats": 1}
#: a smoke run checks that pruning runs, not that it lands on the target: a coarse, quick search
SMOKE_SEARCH = {"steps": 3, "tolerance": 0.5, "refine": False}
DONE = "done.json"
#: the stamp of an output folder (recipe and settings) and the marker of each entry folder it made
STAMP, MARK = "recipe.json", "entry.json"
#: held by the process running a job (in its folder) or profiling the run (in the output folder): several
#: ``compact run`` processes may share one output folder, each job is done once (:mod:`compact.recipes.locks`)
LOCK = ".running.lock"


@dataclass
class RunSettings:
    smoke: bool = False
    data: str | None = None
    data_dir: str | None = None
    progress: bool | None = None
    image_size: int | None = None
    #: run only these entries (and the entries they need) and these seeds; None: all. Not part of the
    #: output folder's stamp: a selection is one sitting's share of the same run.
    entries: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    #: output folders of other recipe runs whose finished training runs may stand in for this run's
    #: trained entries when their configuration is the same (:func:`find_reusable`)
    reuse: tuple[str, ...] = ()
    #: download the dataset into ``data_dir`` when it is missing (online users; never from the recipe, and
    #: only into a folder named on the command line). Not part of the stamp: it changes no result.
    download: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {"smoke": self.smoke, "data": self.data, "data_dir": self.data_dir}
        if self.image_size is not None:  # (absent from the stamps of runs made before the option)
            out["image_size"] = self.image_size
        return out


def seeds_of(recipe: Recipe, smoke: bool) -> list[int]:
    """The seeds a run uses: all of the recipe's, or only the first in a smoke run."""
    return recipe.seeds[:1] if smoke else list(recipe.seeds)


def select_jobs(recipe: Recipe, settings: RunSettings) -> tuple[list[tuple[int, Entry]], list[str]]:
    """The (seed, entry) jobs a run does, in order, and the entries added because a selected one needs them.

    Without a selection: every entry for every seed, seed by seed. With ``settings.entries`` and/or
    ``settings.seeds``: only those, plus (for the same seeds) every entry a selected entry refers to."""
    seeds = seeds_of(recipe, settings.smoke)
    if settings.seeds is not None:
        wrong = [s for s in settings.seeds if s not in seeds]
        if wrong:
            what = "a smoke run uses only seed" if settings.smoke else f"recipe {recipe.name} has seeds"
            raise CompactError(f"--seeds: {', '.join(map(str, wrong))} not run; {what} {', '.join(map(str, seeds))}")
        seeds = [s for s in seeds if s in settings.seeds]
    order = recipe.ordered()
    added: list[str] = []
    if settings.entries is not None:
        names = {e.name for e in recipe.entries}
        wrong = [n for n in settings.entries if n not in names]
        if wrong:
            raise CompactError(
                f"--entries: no entry {', '.join(map(repr, wrong))} in recipe {recipe.name}; "
                f"valid: {', '.join(e.name for e in recipe.entries)}"
            )
        keep = set(settings.entries)
        todo = list(settings.entries)
        while todo:
            for ref in recipe.entry(todo.pop()).references():
                if ref not in keep:
                    keep.add(ref)
                    added.append(ref)
                    todo.append(ref)
        order = [e for e in order if e.name in keep]
    return [(seed, e) for seed in seeds for e in order], added


def pending_jobs(out: Path, recipe: Recipe, smoke: bool = False, settings: RunSettings | None = None) -> list[str]:
    """``entry (seed s)`` for every job that has not finished in ``out``: of the whole recipe, or of the
    selection in ``settings`` (the jobs :func:`select_jobs` gives)."""
    if settings is None:
        jobs = [(seed, e) for seed in seeds_of(recipe, smoke) for e in recipe.ordered()]
    else:
        jobs = select_jobs(recipe, settings)[0]
    return [f"{e.name} (seed {seed})" for seed, e in jobs if not (entry_dir(out, e.name, seed) / DONE).is_file()]


def entry_dir(out: Path, entry: str, seed: int) -> Path:
    return out / entry / f"seed{seed}"


def effective_data(recipe_data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The data a run used: the recipe's ``data`` with the run's overrides (``--data``, ``--data-dir``,
    ``--image-size``) and, in a smoke run, the smoke subset and, for image folders, a small image side
    (the recipe's own side yields to it; a ``--image-size`` given to the run does not)."""
    data = {"name": "fashion-mnist", **recipe_data}
    if settings.get("data"):
        data["name"] = settings["data"]
    if settings.get("data_dir"):
        data["data_dir"] = settings["data_dir"]
    if settings.get("image_size"):
        data["image_size"] = settings["image_size"]
    if settings.get("smoke"):
        data.update({k: SMOKE[k] for k in ("subset", "test_subset")})
        if str(data["name"]).startswith("imagefolder:") and not settings.get("image_size"):
            data["image_size"] = SMOKE_IMAGE_SIZE  # small images, unless the run was given --image-size
    return data


def _data_config(recipe: Recipe, settings: RunSettings) -> dict[str, Any]:
    data = effective_data(recipe.data, settings.to_dict())
    if settings.download:
        if not settings.data_dir:
            raise CompactError("--download needs --data-dir DIR: name the folder the dataset is downloaded into")
        data["download"] = True
    return {"data": data.pop("name"), **data}


def _schedule(recipe: Recipe, settings: RunSettings, seed: int, spec: dict[str, Any]) -> dict[str, Any]:
    values = {**recipe.train_defaults, **_data_config(recipe, settings), **spec, "seed": seed}
    if settings.smoke:
        values.update({k: SMOKE[k] for k in ("batch_size", "eval_batch_size", "epochs")})
    return values


def check_output(out: Path, recipe: Recipe, settings: RunSettings) -> None:
    """Refuse an output folder that holds a run of another recipe (or of other settings), or files that
    ``compact run`` did not write; stamp a new one with the recipe and settings."""
    stamp = {"recipe": recipe.source, "settings": settings.to_dict()}
    path = out / STAMP
    if out.exists() and not out.is_dir():
        raise CompactError(f"output folder {out} exists and is not a folder")
    if path.is_file():
        stored = read_json_object(path, "use another --out")
        if stored != json.loads(json.dumps(stamp)):
            recipe_name = stored.get("recipe")
            name = recipe_name.get("name", "?") if isinstance(recipe_name, dict) else "?"
            name = name if isinstance(name, str) else "?"
            raise CompactError(
                f"{out} holds a run of recipe {name!r} with other contents or settings; use another --out"
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise CompactError(f"{out} is not empty and holds no compact run ({STAMP}); use an empty or new --out")
    write_text(path, json.dumps(stamp, indent=2) + "\n")


def claim(out: Path, folder: Path, entry: str, seed: int) -> None:
    """Make ``folder`` this recipe's folder for ``entry`` and ``seed`` (a marker file), or check that it
    is: a recipe replaces files only in folders it made itself, and never outside ``out``."""
    if not folder.resolve().is_relative_to(out.resolve()):
        raise CompactError(f"{folder} leads outside the output folder {out} (a link?); refusing to write there")
    refuse_links(folder)
    mark = folder / MARK
    want = {"entry": entry, "seed": seed}
    if mark.is_file():
        if try_read_json_object(mark) == want:
            return
        raise CompactError(f"{folder} belongs to another entry or seed ({mark} differs); use another --out")
    if folder.exists() and (not folder.is_dir() or any(not _ours(f.name) for f in folder.iterdir())):
        raise CompactError(f"{folder} holds files that compact run did not make; move them away or use another --out")
    write_text(mark, json.dumps(want) + "\n")


def _ours(name: str) -> bool:
    """A file another ``compact run`` process may be writing in a folder it is claiming: a temporary file
    of :func:`compact._atomic.atomic_path` (``.<name>.<random>.tmp``) or a job lock."""
    return name == LOCK or (name.startswith(".") and name.endswith(".tmp"))


def run_recipe(
    recipe: Recipe, out: str | Path, settings: RunSettings | None = None, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Run (or continue) every entry for every seed, or the selection in ``settings``; returns one status
    record per job. Models are profiled and cascades timed only once the whole recipe is done, in one
    session, so that their latencies are measured side by side."""
    settings = settings or RunSettings()
    out = Path(out)
    jobs, added = select_jobs(recipe, settings)
    for root in settings.reuse:
        if not Path(root).is_dir():
            raise CompactError(f"--reuse {root}: no such folder (give the output folder of another compact run)")
    check_output(out, recipe, settings)
    _remake_exports(out, recipe, settings.smoke, log)
    if added:
        log(f"also running {', '.join(added)}: the selected entries need them")
    statuses = []
    for n, (seed, entry) in enumerate(jobs, 1):
        folder = entry_dir(out, entry.name, seed)
        head = f"[{n}/{len(jobs)}] seed {seed} · {entry.name} ({entry.kind})"
        if (folder / DONE).is_file():
            log(f"{head}: done before, skipped")
            statuses.append(_read_object(folder / DONE))
            continue
        waiting = [r for r in entry.references() if not (entry_dir(out, r, seed) / DONE).is_file()]
        if waiting:  # only when another process runs it (in this process, references come first)
            log(f"{head}: needs {', '.join(waiting)} (seed {seed}), not finished yet; skipped")
            continue
        claim(out, folder, entry.name, seed)
        with job_lock(folder / LOCK) as holder:
            if holder is not None:
                log(f"{head}: another compact run is on it ({holder}); skipped")
                continue
            if (folder / DONE).is_file():  # finished by another process between the check and the lock
                log(f"{head}: done before, skipped")
                statuses.append(_read_object(folder / DONE))
                continue
            log(f"{head} ...")
            statuses.append(_run_job(recipe, entry, seed, out, settings, log))
            log(f"{head}: finished in {statuses[-1]['seconds']:.0f} s")
    left = pending_jobs(out, recipe, settings.smoke)
    if left:
        log(f"{len(left)} job(s) of the recipe not run yet (e.g. {left[0]}): profiling and cascade timing wait "
            "until every entry is done")  # fmt: skip
        return statuses
    with job_lock(out / LOCK) as holder:
        if holder is not None:
            log(f"another compact run is profiling {out} ({holder}); not profiling here")
            return statuses
        _measure(out, recipe, settings, log)
    return statuses


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON object the run wrote (``done.json``, ``cascade.json``); a damaged one is named, with the way out."""
    return read_json_object(path, f"remove {path.parent} to run that job again")


def _run_job(recipe: Recipe, entry: Entry, seed: int, out: Path, settings: RunSettings, log) -> dict[str, Any]:
    """Run one job (its folder claimed and locked) and write its ``done.json``; returns that status."""
    t0 = time.perf_counter()
    runner = {"train": _train, "probe": _probe, "prune": _prune, "cascade": _cascade}[entry.kind]
    extra = runner(recipe, entry, seed, out, settings, log) or {}
    status = {
        "entry": entry.name,
        "kind": entry.kind,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "smoke": settings.smoke,
        **extra,
    }
    write_text(entry_dir(out, entry.name, seed) / DONE, json.dumps(status, indent=2) + "\n")
    return status


def _measure(out: Path, recipe: Recipe, settings: RunSettings, log) -> None:
    """Profile every model not yet profiled (one interleaved session), then time the cascades not yet timed."""
    files = model_files(out, recipe, settings.smoke)
    todo = [f for f in files if not _profiled(f.with_name(f.name.removesuffix(".safetensors") + ".profile.json"))]
    if todo:
        log(f"profiling {len(todo)} models in one interleaved session ...")
        _profile(recipe, todo, settings)
    for seed in seeds_of(recipe, settings.smoke):
        for entry in recipe.entries:
            path = entry_dir(out, entry.name, seed) / CASCADE_RESULT
            if entry.kind == "cascade" and path.is_file() and "latency" not in _read_object(path):
                log(f"timing the cascade {entry.name} (seed {seed}) ...")
                _time_cascade(out, entry, seed, path.parent, settings)


def _profiled(path: Path) -> bool:
    """Whether ``path`` holds a profile; a damaged one (not a JSON object with counts) is measured again."""
    prof = try_read_json_object(path)
    return prof is not None and all(isinstance(prof.get(k), int) for k in ("params", "macs", "macs_conv_linear"))


#: options a reused run may differ in: where the data lives and how it is read, never what is trained
REUSE_IGNORES = ("data_dir", "download", "workers", "eval_batch_size")
#: the files of a finished training run that a reuse copies (exports are made again, profiles measured again);
#: config.yaml last: a copy cut short has none, so the next run copies again instead of resuming a half copy
REUSE_FILES = ("summary.json", "metrics.jsonl", "metrics.csv", "model.safetensors", "checkpoint.pt", "config.yaml")
#: copied when present: a finished run needs only its final model (a run folder kept in git drops the
#: checkpoint, which holds the optimizer state for resuming and nothing a finished run uses)
REUSE_OPTIONAL = ("checkpoint.pt",)


def find_reusable(cfg: Any, roots: tuple[str, ...] | list[str], out: Path) -> Path | None:
    """A finished training run (``<entry>/seed<s>/`` with ``done.json``) under one of ``roots`` whose stored
    configuration equals ``cfg`` in every option but :data:`REUSE_IGNORES`, or None. Folders under ``out``
    itself, links and folders that are not a finished training run are passed over."""
    from compact.engine import TrainConfig
    from compact.engine.config import read_yaml

    want = _trained_as(cfg)
    for root in map(Path, roots):
        for done in sorted(root.glob("*/seed*/" + DONE)):
            folder = done.parent
            if folder.resolve().is_relative_to(out.resolve()) or any(
                (folder / f).is_symlink() or not ((folder / f).is_file() or f in REUSE_OPTIONAL) for f in REUSE_FILES
            ):
                continue
            try:
                if (try_read_json_object(done) or {}).get("kind") != "train":
                    continue
                stored = TrainConfig.from_dict(read_yaml(folder / "config.yaml"), str(folder / "config.yaml"))
            except (OSError, UnicodeDecodeError, CompactError):
                continue  # not a run this version can read: never reused
            if _trained_as(stored) == want:
                return folder
    return None


def _trained_as(cfg: Any) -> dict[str, Any]:
    """What decides how a configuration trains: every option but :data:`REUSE_IGNORES`, with defaults that
    have two spellings written one way (``nu`` unset is its schedule's starting value; integral floats are
    floats)."""
    from compact.exits.weighting import SCHEDULES

    values = {k: v for k, v in cfg.to_dict().items() if k not in REUSE_IGNORES}
    if values.get("nu") is None and values.get("schedule") in SCHEDULES:
        values["nu"] = SCHEDULES.get(values["schedule"]).default_nu
    if isinstance(values.get("nu"), int | float):
        values["nu"] = float(values["nu"])
    return values


def _reuse(source: Path, folder: Path, cfg: Any) -> None:
    """Copy the finished run in ``source`` into ``folder`` (plain files only), its configuration rewritten
    as this version writes it."""
    import shutil

    from compact._atomic import atomic_path

    for name in REUSE_FILES:
        if name == "config.yaml":
            write_text(folder / name, cfg.to_yaml())
        elif not (source / name).is_file():  # an optional file (REUSE_OPTIONAL) the source does not keep
            (folder / name).unlink(missing_ok=True)
        else:
            with atomic_path(folder / name) as tmp:
                shutil.copyfile(source / name, tmp)


def _remake_exports(out: Path, recipe: Recipe, smoke: bool, log) -> None:
    """Export again the outputs of every finished training or probe run that has none (a run folder kept
    without its exported files): they are a function of the run's final model file alone."""
    for seed in seeds_of(recipe, smoke):
        for entry in recipe.entries:
            folder = entry_dir(out, entry.name, seed)
            if entry.kind in ("train", "probe") and (folder / DONE).is_file():
                if not any((folder / "exports").glob("output*.safetensors")):
                    log(f"seed {seed} · {entry.name}: exporting its outputs again (the exported files are gone)")
                    _export_all(folder)


def _export_all(folder: Path) -> None:
    from compact.engine import export_output, open_run

    net, info = open_run(folder).network()
    for k in range(net.num_outputs):
        export_output(net, info, k, folder / "exports" / f"output{k}.safetensors", overwrite=True)


def _train(recipe: Recipe, entry: Entry, seed: int, out: Path, settings: RunSettings, log) -> dict[str, Any]:
    from compact.engine import TrainConfig, train

    folder = entry_dir(out, entry.name, seed)
    cfg = TrainConfig.from_dict(_schedule(recipe, settings, seed, entry.spec), f"entry {entry.name}")
    resume = (folder / "config.yaml").is_file()
    source = None if resume or not settings.reuse else find_reusable(cfg, settings.reuse, out)
    if source is not None:
        log(f"reusing {source}: a finished run with the same configuration")
        _reuse(source, folder, cfg)
    else:
        train(cfg, folder, resume=resume, progress=settings.progress, log=log)
    _export_all(folder)
    # named by its run folder's last parts, not by this machine's path
    return {"reused_from": "/".join(source.parts[-3:])} if source is not None else {}


def _probe(recipe: Recipe, entry: Entry, seed: int, out: Path, settings: RunSettings, log) -> None:
    from compact.engine import open_run, train
    from compact.engine.probe import probe_config

    spec = dict(entry.spec)
    source = entry_dir(out, spec.pop("of"), seed)
    like = spec.pop("exits_like", None)
    if like:
        _, info = open_run(entry_dir(out, like, seed)).network()
        spec["exit_nodes"] = list(info.exit_nodes)
    if settings.smoke:
        spec["epochs"] = SMOKE["epochs"]
    folder = entry_dir(out, entry.name, seed)
    cfg = probe_config(source, spec)
    train(cfg, folder, resume=(folder / "config.yaml").is_file(), progress=settings.progress, log=log)
    _export_all(folder)


def _match_file(out: Path, recipe: Recipe, ref: str, seed: int) -> Path:
    name, _, which = ref.partition(":")
    folder = entry_dir(out, name, seed)
    if recipe.entry(name).kind == "prune":
        return folder / "pruned.safetensors"
    files = sorted((folder / "exports").glob("output*.safetensors"), key=lambda p: int(p.stem[6:]))
    if not files:
        raise CompactError(f"entry {name} (seed {seed}) has no exported outputs to match")
    if which in ("", "final"):
        return files[-1]
    try:
        return files[int(which)]
    except (ValueError, IndexError):
        raise CompactError(f"match {ref!r}: {name} has outputs 0..{len(files) - 1} or 'final'") from None


def _prune(recipe: Recipe, entry: Entry, seed: int, out: Path, settings: RunSettings, log) -> None:
    from compact.prune import PRUNERS, PruneSettings
    from compact.prune.job import Target, prune_config, prune_job

    spec = dict(entry.spec)
    method = PRUNERS.get(spec["method"])
    folder = entry_dir(out, entry.name, seed)
    source = entry_dir(out, spec["from"], seed)
    overrides = {**_data_config(recipe, settings), **dict(spec.get("finetune") or {})}
    if settings.smoke:
        overrides.update({k: SMOKE[k] for k in ("batch_size", "eval_batch_size", "epochs")})
    cfg = prune_config(method.soft, source, None, overrides)
    target = Target(
        macs=spec.get("target_macs"),
        ratio=spec.get("macs_ratio"),
        recipe=spec.get("recipe"),
        match=str(_match_file(out, recipe, spec["match"], seed)) if spec.get("match") else None,
    )
    prune_settings = PruneSettings(
        allocation=spec.get("allocation", "uniform"),
        max_layer_ratio=spec.get("max_layer_ratio", 0.9),
        round_to=spec.get("round_to", 8),
    )
    resume = (folder / "plan.json").is_file()
    prune_job(
        spec["method"],
        cfg,
        target,
        prune_settings,
        folder,
        resume=resume,
        overwrite=not resume,
        progress=settings.progress,
        log=log,
        search=SMOKE_SEARCH if settings.smoke else None,
    )


CASCADE_RESULT = "cascade.json"


def _cascade_options(entry: Entry, smoke: bool) -> dict[str, Any]:
    from compact.cascade.sweep import parse_thresholds

    spec = entry.spec
    opts = {
        "thresholds": parse_thresholds(str(spec.get("thresholds", "0.5:0.999:50"))),
        "rule": spec.get("rule", "maxprob"),
        "batch": spec.get("batch", 64),
        "latency_images": spec.get("latency_images", 256),
        "rounds": spec.get("rounds", 5),
    }
    if smoke:
        opts.update(thresholds=opts["thresholds"][:: max(1, len(opts["thresholds"]) // 3)], batch=2,
                    latency_images=4, rounds=1)  # fmt: skip
    return opts


def _cascade(recipe: Recipe, entry: Entry, seed: int, out: Path, settings: RunSettings, log) -> None:
    """Export the cascade of the entry named by ``of`` and sweep its thresholds on the test set (errors,
    exit shares, MACs); its latency is measured with the other timings, when every entry is done."""
    from compact.cascade.data import study_data
    from compact.cascade.runtime import Cascade
    from compact.cascade.sweep import study

    folder = entry_dir(out, entry.name, seed)
    _export_cascade(out, entry, seed, folder)
    cascade = Cascade(folder / "cascade")
    data = effective_data(recipe.data, settings.to_dict())
    test, _, name = study_data(
        cascade.manifest, data=data["name"], data_dir=data.get("data_dir"), test_subset=data.get("test_subset")
    )
    opts = _cascade_options(entry, settings.smoke)
    result = study(cascade, test, opts["thresholds"], rule=opts["rule"], latency_images=0)
    result.update(dataset=name, of=entry.spec["of"], seed=seed)
    if opts["latency_images"] == 0:
        result["latency"] = None  # not asked for
    write_text(folder / CASCADE_RESULT, json.dumps(result, indent=2) + "\n")
    best = min(result["rows"], key=lambda r: (r["error_pct"], r["mean_macs"]))
    log(f"cascade of {entry.spec['of']}: {len(result['rows'])} thresholds; lowest error {best['error_pct']:.2f}% at "
        f"threshold {best['threshold']:.4g}, {best['mean_macs'] / 1e6:.2f}M MACs per image")  # fmt: skip


def _export_cascade(out: Path, entry: Entry, seed: int, folder: Path) -> None:
    """Export the cascade of the network the entry names (``of``) into ``folder/cascade``. The export is a
    function of the trained weights alone, so a cascade made again equals the one its sweep ran on."""
    from compact.cascade.data import note_subset
    from compact.cascade.export import export_cascade
    from compact.engine import open_run

    run = open_run(entry_dir(out, entry.spec["of"], seed))
    net, info = run.network()
    note_subset(info, run.config)
    export_cascade(net, info, folder / "cascade", overwrite=True)


def _time_cascade(out: Path, entry: Entry, seed: int, folder: Path, settings: RunSettings) -> None:
    """Measure the latency of a swept cascade (the sweep's thresholds and its static exits) and store it."""
    from compact.cascade.data import study_data
    from compact.cascade.runtime import Cascade
    from compact.cascade.sweep import measure_latency

    path = folder / CASCADE_RESULT
    result = _read_object(path)
    if not (folder / "cascade").exists():  # a run folder kept without its ONNX files (they are made again)
        _export_cascade(out, entry, seed, folder)
    cascade = Cascade(folder / "cascade")
    opts = _cascade_options(entry, settings.smoke)
    data = {"data": settings.data, "data_dir": settings.data_dir}
    (x, _), _, _ = study_data(cascade.manifest, data=data["data"] or result.get("dataset"), data_dir=data["data_dir"],
                              test_subset=opts["latency_images"], val_images=1)  # fmt: skip
    temps = result.get("temperatures")
    lat = measure_latency(cascade, x, [r["threshold"] for r in result["rows"]], opts["batch"], result["rule"], temps,
                          opts["rounds"])  # fmt: skip
    for r in result["rows"]:
        r["latency_ms_per_image"] = lat[f"t={r['threshold']}"]
    for s in result["static"]:
        s["latency_ms_per_image"] = lat[f"static {s['output']}"]
    result["latency"] = {
        "images": int(len(x)),
        "batches": [1, opts["batch"]],
        "rounds": opts["rounds"],
        "repeats": 1,
        "runtime": "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL",
        "statistic": "median over interleaved rounds of (time of one pass over the images) / images",
    }
    write_text(path, json.dumps(result, indent=2) + "\n")


def model_files(out: Path, recipe: Recipe, smoke: bool = False) -> list[Path]:
    """Every model the run produced: each output of trained and probed networks, each pruned model."""
    files = []
    for seed in seeds_of(recipe, smoke):
        for entry in recipe.entries:
            folder = entry_dir(out, entry.name, seed)
            if entry.kind == "prune":
                files.append(folder / "pruned.safetensors")
            elif entry.kind == "cascade":
                continue
            else:
                files += sorted((folder / "exports").glob("output*.safetensors"), key=lambda p: int(p.stem[6:]))
    return [f for f in files if f.is_file()]


def _profile(recipe: Recipe, files: list[Path], settings: RunSettings) -> None:
    from compact.profile.profiler import load_target, profile_models, write_profile

    prof = {**recipe.profile, **(SMOKE_PROFILE if settings.smoke else {})}
    targets = [load_target(f) for f in files]
    profiles = profile_models(
        targets,
        onnx=prof["onnx"],
        batches=prof["batches"],
        threads=prof["threads"],
        rounds=prof["rounds"],
        repeats=prof["repeats"],
    )
    for t, p in zip(targets, profiles, strict=True):
        write_profile(p, t.profile_path)
