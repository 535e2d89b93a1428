"""Recipes, `compact run` and `compact report`: schema errors, the demo's smoke run with its tables and Pareto
plots checked against the stored results, resuming, and the paper-setting recipes run on stand-in data."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from compact._resources import resolve, shipped
from compact.cli import main
from compact.errors import CompactError
from compact.recipes import RunSettings, load_recipe, parse_recipe, run_recipe
from compact.report import make_report

from _helpers import fake_cifar10_py, needs_fmnist

BASELINES = Path(__file__).resolve().parent.parent / "baselines"


def _demo() -> dict:
    return yaml.safe_load((BASELINES / "demo.yaml").read_text())


def _with(change):
    raw = _demo()
    change(raw)
    return raw


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(colour="blue"), "unknown key(s) colour"),
        (lambda r: r["entries"][0]["train"].update(epochz=3), "unknown option(s) epochz"),
        (lambda r: r["entries"][0]["train"].update(method="sgd"), "unknown backpropagation method 'sgd'"),
        (lambda r: r["entries"][0]["train"].update(lr=-1), "lr must be a number in (0, 10000]"),
        (lambda r: r["entries"][4]["prune"].update({"from": "nowhere"}), "refers to unknown entry 'nowhere'"),
        (lambda r: r["entries"][4]["prune"].update(method="taylor"), "unknown pruning method 'taylor'"),
        (lambda r: r["entries"][4]["prune"].update(macs_ratio=0.5), "exactly one of match, macs_ratio"),
        (lambda r: r["entries"].append(dict(r["entries"][0])), "defined twice"),
        (lambda r: r.update(seeds=[]), "seeds must be a list of 1..100 distinct integers"),
        (lambda r: r["data"].update(colour=1), "data: unknown key(s) colour"),
        (lambda r: r["entries"][2]["probe"].pop("of"), "probe needs 'of'"),
        # a null, empty or mapping reference names no entry (these were internal KeyErrors)
        (lambda r: r["entries"][2]["probe"].update(of=None), "refers to unknown entry None"),
        (lambda r: r["entries"][2]["probe"].update(exits_like={}), "refers to unknown entry {}"),
        (lambda r: r["entries"][4]["prune"].update(match=""), "refers to unknown entry ''"),
        # names become folder names: nothing that leaves the output folder
        (lambda r: r["entries"][4].update(name=".."), "entries[4].name must be a plain name"),
        (lambda r: r["entries"][4].update(name="a/b"), "entries[4].name must be a plain name"),
        (lambda r: r["entries"][4].update(name=".hidden"), "entries[4].name must be a plain name"),
        (lambda r: r.update(name="/elsewhere/x"), "'name' must be a plain name"),
        (lambda r: r.update(name="../../x"), "'name' must be a plain name"),
        # labels are cells of the report's Markdown tables: a bar or a line break would forge rows or headings
        (lambda r: r["entries"][0].update(label="MW|BP"), "at most 200 characters without '|'"),
        (lambda r: r["entries"][0].update(label="a\n## b"), "label must be one line"),
        (lambda r: r["entries"][0].update(label=""), "label must be one line"),
        (lambda r: r.update(description=["x"]), "'description' must be a text"),
        (lambda r: r.update(description="a\x1b[2Jb"), "'description' must be a text"),
        # everything that would fail only after hours of training is checked before the first entry
        (lambda r: r["entries"][4]["prune"].update(match="mwbp:zz"), "match 'mwbp:zz': mwbp has outputs 0..2"),
        (lambda r: r["entries"][4]["prune"].update(match="mwbp:3"), "match 'mwbp:3': mwbp has outputs 0..2"),
        (lambda r: r["entries"][4]["prune"].update(match="deep-fpgm:0"), "only its final output"),
        (lambda r: r.update(profile={"rounds": 0}), "rounds must be an integer in 1..10000"),
        (lambda r: r.update(profile={"batches": []}), "batches must be a non-empty list"),
        (lambda r: r.update(profile={"onnx": "yes"}), "onnx must be true or false"),
        (lambda r: r["data"].update(name="mnist"), "unknown dataset 'mnist'"),
        (lambda r: r["entries"][0]["train"].update(model="resnet9000"), "unknown model 'resnet9000'"),
        (lambda r: r["entries"][0]["train"].update(model_kwargs={"pretrained": True}), "'pretrained' is refused"),
        (lambda r: r["entries"][0]["train"].update(model_kwargs={"shortcut": "C"}), "shortcut must be one of"),
        (lambda r: r["entries"][2]["probe"].update({"of": "deep-l1"}), "must name a trained entry"),
        (lambda r: r["entries"][5]["prune"].update({"from": "deep-l1"}), "is a pruned one"),
        (lambda r: r["entries"][4]["prune"].update(target_macs="1e400", match=None), "MACs target must lie in"),
        (lambda r: r["entries"][4]["prune"].update(round_to=0), "round_to must be an integer in 1..1024"),
        (lambda r: r["entries"][4]["prune"].update(finetune={"epochs": 0}), "epochs must be an integer in 1..100000"),
        # downloading writes into the folder the recipe names: only the user asks for it (compact run --download)
        (lambda r: r["data"].update(download=True, data_dir="/somewhere"), "data: a recipe cannot ask to download"),
        (lambda r: r["entries"][0]["train"].update(download=True), "'mwbp': train: a recipe cannot ask to download"),
        (lambda r: r.update(train_defaults={"download": True}), "train_defaults: a recipe cannot ask to download"),
        (lambda r: r["entries"][4]["prune"].update(finetune={"download": True}), "cannot ask to download"),
    ],
)
def test_schema_errors_name_the_key(change, message):
    with pytest.raises(CompactError, match=re.escape(message)):
        parse_recipe(_with(change), "demo.yaml")


def test_cyclic_references_are_refused():
    raw = _demo()
    raw["entries"] = [
        {"name": "a", "prune": {"from": "b", "method": "l1", "macs_ratio": 0.5}},
        {"name": "b", "prune": {"from": "a", "method": "l1", "macs_ratio": 0.5}},
    ]
    with pytest.raises(CompactError, match="cycle: a -> b -> a"):
        parse_recipe(raw, "demo.yaml")


def test_recipe_files_missing_or_not_yaml(tmp_path, capsys):
    with pytest.raises(CompactError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("entries: [unclosed\n")
    assert main(["run", str(tmp_path / "bad.yaml")]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


SHIPPED = ["demo", "fmnist-convergence", "fmnist-converged", "fmnist-ablation-nu",
           "fmnist-ablation-losses", "cifar10-resnet", "cifar10-table1", "imagenet-resnet"]  # fmt: skip


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_parse_and_load_by_name(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.ordered()
    assert resolve("recipe", name).resolve() == (BASELINES / f"{name}.yaml").resolve()


def test_every_baseline_ships_and_a_local_file_wins(tmp_path, monkeypatch, capsys):
    assert sorted(shipped("recipe")) == sorted(p.stem for p in BASELINES.glob("*.yaml"))
    assert main(["recipes"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == sorted(shipped("recipe"))
    with pytest.raises(CompactError, match="neither a file nor one of compact's recipes; shipped: cifar10-resnet"):
        load_recipe("dmeo")
    raw = _demo()
    raw["name"] = "local"
    (tmp_path / "demo").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert load_recipe("demo").name == "local"  # an existing file is never shadowed by a shipped recipe


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from compact.data import find_fashion_mnist

    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST not installed")
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["run", str(BASELINES / "demo.yaml"), "--smoke", "--out", str(out), "--no-progress"]) == 0
    return out


@needs_fmnist
def test_demo_smoke_report_and_plots_show_the_runs_data(demo_run, tmp_path):
    from PIL import Image

    assert main(["report", str(demo_run), "--out", str(tmp_path / "report")]) == 0
    report = tmp_path / "report"
    for stem in ("pareto_macs", "pareto_latency"):
        with Image.open(report / f"{stem}.png") as im:
            im.verify()
            assert im.size[0] > 400
        ET.parse(report / f"{stem}.svg")  # well-formed SVG
    md = (report / "report.md").read_text()
    assert "SMOKE RUN" in md and "ResNet-32 pruned, SFP" in md and "Table 6 style" in md

    # the data behind the MACs plot is the run's: errors from the runs, MACs from the stored profiles
    plots = json.loads((report / "pareto.json").read_text())
    series = {s["label"]: s for s in plots["macs"]["series"]}
    mwbp = series["MW-BP ResNet-20"]
    summary = json.loads((demo_run / "mwbp" / "seed0" / "summary.json").read_text())
    assert mwbp["y"] == [o["test_error_pct"] for o in summary["outputs"]]
    for k, x in enumerate(mwbp["x"]):
        prof = json.loads((demo_run / "mwbp" / "seed0" / "exports" / f"output{k}.profile.json").read_text())
        assert x == pytest.approx(prof["macs_conv_linear"] / 1e6)
    pruned = json.loads((demo_run / "deep-l1" / "seed0" / "prune.json").read_text())
    assert series["ResNet-32 pruned, L1"]["y"] == [pruned["test_error_pct"]["final"]]
    assert plots["macs"]["front"], "a Pareto front is marked"
    # the cascade entry: its sweep (timed at the end of the run) is drawn beside the models, off the front
    study = json.loads((demo_run / "mwbp-cascade" / "seed0" / "cascade.json").read_text())
    assert study["latency"]["batches"] == [1, 2] and all(r["latency_ms_per_image"]["1"] > 0 for r in study["rows"])
    sweep = next(s for s in plots["macs"]["series"] if s["kind"] == "cascade")
    assert sweep["x"] == pytest.approx([r["mean_macs_conv_linear"] / 1e6 for r in study["rows"]])
    assert sweep["y"] == [r["error_pct"] for r in study["rows"]]
    assert not any("@" in p["model"] for p in plots["macs"]["front"])
    assert "## Early-exit cascades" in md and "cascade of mwbp" in md
    # its latency is not measured like the single models' (no spin-waiting sessions): the report says so
    assert "compare the cascade's latency with the static rows below" in md
    assert "The cascades' latency is measured with sessions that do not spin-wait" in md
    # summary.md (for CI job summaries): the report's tables without images, and the fronts of pareto.json
    summary = (report / "summary.md").read_text()
    assert "![" not in summary and md.split("## Pareto plots")[0] == summary.split("## Pareto fronts")[0]
    for axis in ("macs", "latency"):
        rows = summary.split(f"Pareto front by {axis}")[1].split("\n\n")[1].splitlines()[2:]
        assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [p["model"] for p in plots[axis]["front"]]
    # claims: declared by the recipe, computed from the run, marked as smoke; one seed cannot decide
    claims = json.loads((report / "claims.json").read_text())
    assert claims["smoke"] is True and {c["kind"] for c in claims["claims"]} == {"exits", "final", "pruned"}
    assert claims["comparisons"] and all(r["verdict"] == "inconclusive" for r in claims["comparisons"])
    assert "## Paper's claims" in md and "SMOKE RUN: verdicts computed from one batch" in md
    assert "*Budget: 16 training images of fashion-mnist" in md
    # learning curves: the data behind curves.png is the runs' metrics
    curves = json.loads((report / "curves.json").read_text())
    final = next(p for p in curves["panels"] if p["title"] == "final outputs")
    mw = next(s for s in final["series"] if s["entry"] == "mwbp")
    history = [json.loads(line) for line in (demo_run / "mwbp" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert mw["epochs"] == [r["epoch"] for r in history] and mw["mean"] == [r["test_error_pct"][-1] for r in history]
    assert {p["title"] for p in curves["panels"]} >= {"final outputs", f"exits at layer {summary_depth(demo_run)}"}
    with Image.open(report / "curves.png") as im:
        im.verify()
    table = json.loads((report / "table.json").read_text())
    assert {row["model"] for row in table} >= {
        "MW-BP ResNet-20, exit 0",
        "ResNet-32 pruned, FPGM",
        "standard ResNet-32",
    }


def summary_depth(run) -> int:
    """The depth of the MW-BP network's first exit, from its summary."""
    return json.loads((run / "mwbp" / "seed0" / "summary.json").read_text())["outputs"][0]["depth"]


@needs_fmnist
def test_rerun_skips_finished_entries_and_refuses_another_recipe(demo_run, tmp_path):
    lines = []
    run_recipe(load_recipe(BASELINES / "demo.yaml"), demo_run, RunSettings(smoke=True), log=lines.append)
    assert all("done before, skipped" in line for line in lines if line.startswith("["))
    other = _demo()
    other["seeds"] = [1]
    with pytest.raises(CompactError, match="holds a run of recipe 'demo' with other contents"):
        run_recipe(parse_recipe(other), demo_run, RunSettings(smoke=True))
    # a run that is not finished is not reported as complete
    partial = tmp_path / "partial"
    shutil.copytree(demo_run, partial)
    (partial / "deep-sfp" / "seed0" / "done.json").unlink()
    with pytest.raises(CompactError, match="is not complete.*deep-sfp seed 0"):
        make_report(partial, partial / "report")
    result = make_report(partial, partial / "report", partial=True)
    assert not result["complete"] and "INCOMPLETE" in (partial / "report" / "report.md").read_text()


def test_a_selection_adds_what_it_needs_and_names_wrong_choices():
    from compact.recipes.runner import select_jobs

    recipe = parse_recipe(_with(lambda r: r.update(seeds=[0, 1, 2])))
    jobs, added = select_jobs(recipe, RunSettings(entries=("deep-l1",), seeds=(2, 0)))
    # pruning needs the network it prunes and the one whose MACs it matches, for the same seeds
    assert [(s, e.name) for s, e in jobs] == [(0, "mwbp"), (0, "deep"), (0, "deep-l1"),
                                              (2, "mwbp"), (2, "deep"), (2, "deep-l1")]  # fmt: skip
    assert sorted(added) == ["deep", "mwbp"]
    jobs, added = select_jobs(recipe, RunSettings(entries=("standard-probe",)))
    assert {e.name for _, e in jobs} == {"standard", "mwbp", "standard-probe"} and len(jobs) == 9
    assert len(select_jobs(recipe, RunSettings())[0]) == 3 * len(recipe.entries)
    with pytest.raises(CompactError, match="--entries: no entry 'jdoint' in recipe demo; valid: mwbp, standard"):
        select_jobs(recipe, RunSettings(entries=("mwbp", "jdoint")))
    with pytest.raises(CompactError, match="--seeds: 7 not run; recipe demo has seeds 0, 1, 2"):
        select_jobs(recipe, RunSettings(seeds=(7,)))
    with pytest.raises(CompactError, match="a smoke run uses only seed 0"):
        select_jobs(recipe, RunSettings(smoke=True, seeds=(1,)))


def _small_demo(tmp_path: Path) -> tuple[Path, list[str]]:
    """The demo's first three entries (standard, mwbp, standard-probe) as a recipe file: its output folder
    and the `compact run --smoke` arguments that run it."""
    raw = _with(lambda r: r.update(entries=r["entries"][:3], claims=r["claims"][:2]))
    recipe_file = tmp_path / "small.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    return out, ["run", str(recipe_file), "--smoke", "--out", str(out), "--no-progress"]


@needs_fmnist
def test_a_selected_sitting_runs_only_its_share_then_the_rest_finishes(tmp_path, capsys):
    out, base = _small_demo(tmp_path)
    assert main([*base, "--entries", "standard"]) == 0
    text = capsys.readouterr().out
    assert (out / "standard" / "seed0" / "done.json").is_file() and not (out / "mwbp").exists()
    assert "2 job(s) remain" in text and "profiling and cascade timing wait" in text
    assert not list(out.glob("*/seed0/exports/*.profile.json"))  # latencies are measured together, at the end
    assert main(["report", str(out), "--partial", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    head = (tmp_path / "r" / "report.md").read_text().splitlines()[2]
    assert head.startswith("**INCOMPLETE: 3 parts missing**") and str(tmp_path) not in head
    assert "standard seed 0 output 0 (not profiled)" in head and "mwbp seed 0 (not finished)" in head
    assert main([*base, "--entries", "standard-probe"]) == 0  # needs mwbp (its exits) and standard (done)
    text = capsys.readouterr().out
    assert re.search(r"also running (standard, mwbp|mwbp, standard): the selected entries need them", text)
    assert "standard (train): done before, skipped" in text
    assert "all entries of demo are done" in text and list(out.glob("*/seed0/exports/*.profile.json"))
    for argv, message in [
        (["--entries", "standard,,mwbp"], "--entries takes names separated by commas"),
        (["--seeds", "0,x"], "--seeds takes whole numbers separated by commas"),
    ]:
        assert main([*base, *argv]) != 0
        assert message in capsys.readouterr().err


@needs_fmnist
def test_two_runs_on_one_folder_share_the_jobs_and_take_over_a_dead_ones(tmp_path, capsys):
    import os
    import socket
    import subprocess
    import sys

    out, base = _small_demo(tmp_path)
    assert main([*base, "--entries", "standard"]) == 0
    capsys.readouterr()
    # another live run (here: this very process, alive) holds mwbp: it is skipped, and so is the probe that needs it
    held = out / "mwbp" / "seed0"
    held.mkdir(parents=True)
    (held / "entry.json").write_text(json.dumps({"entry": "mwbp", "seed": 0}))
    from compact.recipes.locks import _me

    (held / ".running.lock").write_text(json.dumps(_me()))
    assert main(base) == 0
    text = capsys.readouterr().out
    assert f"mwbp (train): another compact run is on it (pid {os.getpid()} on {socket.gethostname()}" in text
    assert "standard-probe (probe): needs mwbp (seed 0), not finished yet; skipped" in text
    assert not (held / "done.json").exists() and not (out / "standard-probe" / "seed0" / "done.json").exists()
    assert "profiling and cascade timing wait" in text and not list(out.glob("*/seed0/exports/*.profile.json"))
    assert "2 job(s) of this run are not finished (another compact run holds them, or they need one it holds)" in text
    # the holder died (killed: its lock stays): the next run takes the job over; profiling is held elsewhere
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (held / ".running.lock").write_text(json.dumps({**_me(), "pid": dead.pid, "start": None}))
    (out / ".running.lock").write_text(json.dumps(_me()))
    assert main(base) == 0
    text = capsys.readouterr().out
    assert (held / "done.json").is_file() and (out / "standard-probe" / "seed0" / "done.json").is_file()
    assert not (held / ".running.lock").exists()
    assert "another compact run is profiling" in text and not list(out.glob("*/seed0/exports/*.profile.json"))
    (out / ".running.lock").unlink()
    assert main(base) == 0
    assert re.search(r"profiling \d+ models in one interleaved session", capsys.readouterr().out)
    assert list(out.glob("*/seed0/exports/*.profile.json")) and not (out / ".running.lock").exists()


def test_reuse_matches_what_decides_training_and_nothing_else(tmp_path):
    from compact.engine import TrainConfig
    from compact.recipes.runner import REUSE_FILES, find_reusable

    def stored(name: str, **kw) -> None:
        folder = tmp_path / "other" / name / "seed0"
        folder.mkdir(parents=True)
        for f in REUSE_FILES:
            (folder / f).write_text("x")
        (folder / "config.yaml").write_text(TrainConfig(model="cifar_resnet20", exits=3, method="mwbp", **kw).to_yaml())
        (folder / "done.json").write_text(json.dumps({"kind": "train"}))

    stored("default-nu")  # nu unset: the constant schedule's 2
    stored("adaptive", schedule="adaptive-1", workers=0)

    def find(**kw):
        cfg = TrainConfig(model="cifar_resnet20", exits=3, method="mwbp", **kw)
        found = find_reusable(cfg, [str(tmp_path / "other")], tmp_path / "out")
        return found and found.parent.name

    assert find(nu=2) == "default-nu" and find(nu=2.0, workers=7, data_dir="/elsewhere") == "default-nu"
    assert find(schedule="adaptive-1", nu=0.5) == "adaptive"
    for differs in ({"nu": 1}, {"seed": 1}, {"epochs": 3}, {"subset": 100}, {"schedule": "adaptive-2"}):
        assert find(**differs) is None, differs
    # a finished run kept without its checkpoint (the optimizer state, for resuming only) is still reused
    (tmp_path / "other" / "default-nu" / "seed0" / "checkpoint.pt").unlink()
    assert find(nu=2) == "default-nu"
    # a run that is not finished is not reused (links: test_reuse_copies_only_runs_with_the_same_configuration)
    (tmp_path / "other" / "default-nu" / "seed0" / "done.json").unlink()
    assert find(nu=2) is None


@needs_fmnist
def test_reuse_copies_only_runs_with_the_same_configuration(tmp_path, capsys):
    first = _with(lambda r: r.update(entries=r["entries"][:2], claims=r["claims"][1:2]))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(first))
    second = _with(lambda r: r.update(name="other", entries=r["entries"][:2], claims=r["claims"][1:2]))
    second["entries"][0]["train"]["nu"] = 1  # MW-BP differs (nu 2 by default); standard is the same
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(second))
    smoke = ["--smoke", "--no-progress"]
    assert main(["run", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "a"), *smoke]) == 0
    assert main(["run", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "a"),
                 *smoke]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert text.count("reusing ") == 1 and f"reusing {tmp_path / 'a' / 'standard' / 'seed0'}" in text
    done = json.loads((tmp_path / "b" / "standard" / "seed0" / "done.json").read_text())
    assert done["reused_from"] == "a/standard/seed0"
    assert "reused_from" not in json.loads((tmp_path / "b" / "mwbp" / "seed0" / "done.json").read_text())
    for name in ("summary.json", "metrics.jsonl", "model.safetensors"):
        assert (tmp_path / "b" / "standard" / "seed0" / name).read_bytes() == (
            tmp_path / "a" / "standard" / "seed0" / name
        ).read_bytes()
    assert (tmp_path / "b" / "standard" / "seed0" / "exports" / "output0.profile.json").is_file()  # measured here
    assert main(["report", str(tmp_path / "b")]) == 0
    assert "reused here (`compact run --reuse`): standard seed 0 <- a/standard/seed0." in capsys.readouterr().out
    # a finished run with a planted link is passed over; a missing folder is named before anything runs
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    model = tmp_path / "c" / "standard" / "seed0" / "model.safetensors"
    model.unlink()
    model.symlink_to(tmp_path / "a" / "standard" / "seed0" / "model.safetensors")
    shutil.rmtree(tmp_path / "b" / "standard")
    assert main(["run", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "c"),
                 *smoke]) == 0  # fmt: skip
    assert "reusing" not in capsys.readouterr().out
    assert main(["run", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "x"),
                 *smoke]) == 2  # fmt: skip
    assert f"--reuse {tmp_path / 'x'}: no such folder" in capsys.readouterr().err


@needs_fmnist
def test_a_run_folder_kept_without_what_it_can_remake_finishes(demo_run, tmp_path, capsys):
    """A run folder kept in git drops the checkpoints of finished runs, their exported outputs and the
    cascades' ONNX files: the run still profiles, reuses and times its cascade; exports and cascade are made
    again exactly as they were."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    for ckpt in run.glob("*/seed0/checkpoint.pt"):
        ckpt.unlink()
    exports = {f: f.read_bytes() for f in run.glob("*/seed0/exports/*.safetensors")}
    assert len(exports) >= 4
    for f in exports:
        f.unlink()
    (run / "mwbp" / "seed0" / "exports" / "output0.profile.json").unlink()  # profiled again, from the new file
    damaged = run / "mwbp" / "seed0" / "exports" / "output1.profile.json"
    damaged.write_text("[]")  # a damaged profile is measured again, too
    folder = run / "mwbp-cascade" / "seed0"
    manifest = json.loads((folder / "cascade" / "manifest.json").read_text())
    shutil.rmtree(folder / "cascade")
    study = json.loads((folder / "cascade.json").read_text())
    swept = study.pop("latency")
    (folder / "cascade.json").write_text(json.dumps(study))
    assert main(["run", str(BASELINES / "demo.yaml"), "--smoke", "--out", str(run), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "timing the cascade mwbp-cascade (seed 0)" in text and "seed 0 · mwbp: exporting its outputs again" in text
    assert {f: f.read_bytes() for f in exports} == exports
    assert re.search(r"profiling 2 models in one interleaved session", text)
    assert json.loads(damaged.read_text())["params"] > 0
    assert json.loads((folder / "cascade" / "manifest.json").read_text()) == manifest  # same files, same hashes
    assert json.loads((folder / "cascade.json").read_text())["latency"] == swept
    # and it stands in for a later recipe's run (--reuse), without a checkpoint to copy
    other = _with(lambda r: r.update(name="other", entries=r["entries"][:1], claims=[]))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    argv = ["run", str(tmp_path / "other.yaml"), "--smoke", "--no-progress", "--out", str(tmp_path / "o")]
    assert main([*argv, "--reuse", str(run)]) == 0
    assert f"reusing {run / 'mwbp' / 'seed0'}" in capsys.readouterr().out
    assert not (tmp_path / "o" / "mwbp" / "seed0" / "checkpoint.pt").exists()


@needs_fmnist
def test_a_partial_report_says_how_many_seeds_each_number_has(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    stamp = json.loads((run / "recipe.json").read_text())
    stamp["recipe"]["seeds"] = [0, 1]  # as if the recipe had two seeds and only MW-BP had finished the second
    stamp["settings"]["smoke"] = False  # (a smoke run uses the first seed only)
    (run / "recipe.json").write_text(json.dumps(stamp))
    shutil.copytree(run / "mwbp" / "seed0", run / "mwbp" / "seed1")
    make_report(run, run / "report", partial=True)
    text = (run / "report" / "report.md").read_text()
    assert "seeds finished so far: mwbp 0/1, standard 0, standard-probe 0, deep 0," in text
    head, row = (next(line for line in text.splitlines() if line.startswith(start)) for start in ("| |", "| Test"))
    cells = dict(zip(*([c.strip() for c in line.strip("|").split("|")[1:]] for line in (head, row)), strict=True))
    mwbp = [name for name in cells if name.startswith("MW-BP")]
    assert len(mwbp) == 3 and all(cells[n].endswith("± 0.00") for n in mwbp)  # both seeds: no mark
    assert all(c.endswith(" (n=1)") for name, c in cells.items() if name not in mwbp)  # the others: one of two
    rows = json.loads((run / "report" / "claims.json").read_text())["comparisons"]
    row = next(r for r in rows if r["comparison"] == "final: mwbp vs standard")
    assert row["n"] == 1 and row["verdict"] == "inconclusive" and row["seeds"] == [0]  # paired only where both ran


def test_cifar10_recipe_runs_with_smoke_on_stand_in_data(tmp_path):
    fake_cifar10_py(tmp_path / "cifar", n=40)
    out = tmp_path / "run"
    argv = [
        "run",
        str(BASELINES / "cifar10-resnet.yaml"),
        "--smoke",
        "--data-dir",
        str(tmp_path / "cifar"),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert main(["report", str(out)]) == 0
    table = json.loads((out / "report" / "table.json").read_text())
    assert "ResNet-110-B (PFEC recipe)" in {row["model"] for row in table}


def test_imagenet_recipe_runs_with_smoke_on_a_stand_in_image_folder(tmp_path):
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(8):
                pixels = torch.randint(0, 256, (40, 40, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "img" / split / c / f"{i}.png")
    out = tmp_path / "run"
    argv = [
        "run",
        str(BASELINES / "imagenet-resnet.yaml"),
        "--smoke",
        "--data",
        f"imagefolder:{tmp_path / 'img'}",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "pareto_latency.svg").is_file()


def test_the_report_names_the_data_a_run_used():
    """Overrides given to compact run (--data, --data-dir, --image-size) and the smoke subset are what the
    report states, not the recipe's own data."""
    from compact.recipes.runner import effective_data

    recipe_data = {"name": "fashion-mnist", "subset": 5000, "test_subset": 2000}
    used = effective_data(recipe_data, {"data": "imagefolder:/digits", "data_dir": None, "smoke": False})
    assert used == {"name": "imagefolder:/digits", "subset": 5000, "test_subset": 2000}
    smoke = effective_data(recipe_data, {"data": "imagefolder:/digits", "smoke": True})
    assert (smoke["subset"], smoke["test_subset"], smoke["image_size"]) == (16, 16, 32)
    sized = effective_data(recipe_data, {"data": "imagefolder:/digits", "smoke": True, "image_size": 28})
    assert sized["image_size"] == 28  # an explicit size survives --smoke
    assert effective_data(recipe_data, {"smoke": True}).get("image_size") is None  # in-memory data keeps its own


def test_compact_recipes_validates_a_users_file(tmp_path, capsys):
    good = tmp_path / "mine.yaml"
    good.write_text((BASELINES / "demo.yaml").read_text().replace("name: demo", "name: mine"))
    assert main(["recipes", str(good)]) == 0
    assert f"{good}: valid; recipe mine, 8 entries" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text((BASELINES / "demo.yaml").read_text().replace('match: "mwbp:final"', 'match: "mwbp:zz"', 1))
    assert main(["recipes", str(bad)]) == 2
    assert "match 'mwbp:zz': mwbp has outputs 0..2" in capsys.readouterr().err


@needs_fmnist
@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(rows=[]),
        lambda s: s["rows"][0].update(error_pct="low"),
        lambda s: s["rows"][0].update(exit_share=[1.0]),
        lambda s: s["static"][0].update(latency_ms_per_image={"one": 1.0}),
        lambda s: s.pop("rule"),
        # the fields the report prints were read unchecked (internal TypeErrors and KeyErrors, found by fuzzing)
        lambda s: s.update(test_images=None),
        lambda s: s.pop("exit_macs"),
        lambda s: s.update(exit_macs=s["exit_macs"][:-1]),  # one exit cost short of the share columns
        lambda s: s.update(rule="maxprob\n| x"),
        lambda s: s.update(latency={"images": 4, "rounds": "one", "batches": [1]}),
        lambda s: s.update(temperatures=[1.0, float("nan")]),
        lambda s: s.update(operating_point={"threshold": 0.5, "target_error_pct": 10}),
    ],
)
def test_a_damaged_cascade_study_is_a_clear_report_error(demo_run, tmp_path, capsys, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    path = run / "mwbp-cascade" / "seed0" / "cascade.json"
    study = json.loads(path.read_text())
    damage(study)
    path.write_text(json.dumps(study))
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    assert "cascade.json is damaged" in capsys.readouterr().err


@needs_fmnist
@pytest.mark.parametrize(
    "rel, damage, message",
    [
        ("mwbp/seed0/metrics.jsonl", lambda t: "[1, 2]\n" + t, "line 1 is a JSON list, not an object"),
        ("mwbp/seed0/metrics.jsonl", lambda t: t.replace('"epoch": 1,', '"epoch": 0,', 1), "not an epoch record"),
        (
            "mwbp/seed0/metrics.jsonl",
            lambda t: t.replace('"test_error_pct": [', '"test_error_pct": ["x", ', 1),
            "'test_error_pct' is not a list of numbers",
        ),  # fmt: skip
        # one value too many would shift every output's curve by one: refused, never drawn
        (
            "mwbp/seed0/metrics.jsonl",
            lambda t: t.replace('"test_error_pct": [', '"test_error_pct": [1.0, ', 1),
            "(epoch 1) has 4 test errors for 3 outputs",
        ),  # fmt: skip
        ("standard/seed0/metrics.jsonl", lambda t: "", "a finished run has no epochs"),
        # an error that no test set can give was drawn and tabulated as it stood
        (
            "mwbp/seed0/metrics.jsonl",
            lambda t: re.sub(r'"test_error_pct": \[[0-9.]+', '"test_error_pct": [250.0', t, count=1),
            "(epoch 1) has a test error outside 0..100%",
        ),  # fmt: skip
        (
            "mwbp/seed0/summary.json",
            lambda t: re.sub(r'"test_error_pct": [0-9.]+', '"test_error_pct": -3.5', t, count=1),
            "test error -3.5 lies outside 0..100%",
        ),  # fmt: skip
        # an output index beyond the outputs was an internal IndexError; a repeated one would merge two outputs
        ("mwbp/seed0/summary.json", lambda t: t.replace('"output": 0', f'"output": {10**30}', 1), "index in 0..2"),
        ("mwbp/seed0/summary.json", lambda t: t.replace('"output": 1', '"output": 0', 1), "its own 'output' index"),
        (
            "mwbp/seed0/exports/output0.profile.json",
            lambda t: t.replace('"macs": ', '"macs": -', 1),
            "'macs' is negative",
        ),  # fmt: skip
    ],
)
def test_a_damaged_metrics_or_profile_file_is_a_clear_report_error(demo_run, tmp_path, capsys, rel, damage, message):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    path = run / rel
    path.write_text(damage(path.read_text()))
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(path) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "rep").exists()


@needs_fmnist
@pytest.mark.parametrize(
    "rel, content, message",
    [
        ("mwbp-cascade/seed0/cascade.json", "{", "cascade.json is damaged (Expecting property name"),
        ("mwbp-cascade/seed0/cascade.json", "[]", "cascade.json is damaged (a JSON list, not an object); remove"),
        ("standard/seed0/done.json", "\x00", "done.json is damaged (Expecting value"),
        ("deep-l1/seed0/plan.json", "[]", "plan.json is damaged (a JSON list, not an object); start the job again"),
    ],
)
def test_a_damaged_job_file_stops_a_resumed_run_with_its_name(demo_run, tmp_path, capsys, rel, content, message):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    (run / rel).write_text(content)
    if rel.startswith("deep-l1"):
        (run / "deep-l1" / "seed0" / "done.json").unlink()  # a pruning job cut short: it resumes from its plan
    assert main(["run", str(BASELINES / "demo.yaml"), "--smoke", "--no-progress", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(run / rel) in err and len(err.splitlines()) == 1


@needs_fmnist
@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["before"].update(params=0),  # the reductions divide by it: was a ZeroDivisionError
        lambda r: r.pop("before"),  # was a KeyError
        lambda r: r.update(test_error_pct=[]),  # was a TypeError
        lambda r: r.update(target_macs="half"),
    ],
    ids=["zero-params", "no-before", "errors-list", "target-text"],
)
def test_a_damaged_pruning_plan_stops_a_resumed_job_with_its_name(demo_run, tmp_path, capsys, change):
    """Found by reading what finishing a resumed pruning job computes with: each field of the plan's report
    it uses is checked, so a damaged plan is a one-line error, never an internal one."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    plan_path = run / "deep-l1" / "seed0" / "plan.json"
    plan = json.loads(plan_path.read_text())
    change(plan["report"])
    plan_path.write_text(json.dumps(plan))
    (run / "deep-l1" / "seed0" / "done.json").unlink()
    assert main(["run", str(BASELINES / "demo.yaml"), "--smoke", "--no-progress", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{plan_path} is damaged (its report needs positive counts" in err and len(err.splitlines()) == 1


def test_cifar10_table1_covers_every_row_and_runs_with_smoke(tmp_path):
    """Every row of the paper's Table 1 is an entry; one entry per network (its standard baseline and its
    MW-BP row) runs with --smoke on stand-in data at 8x8 (the whole recipe takes minutes on a CPU)."""
    recipe = load_recipe("cifar10-table1")
    rows = {(e.spec["model"], e.spec["method"], e.spec.get("exits")) for e in recipe.entries}
    paper = {("cifar_resnet44", 2), ("cifar_resnet56", 2), ("cifar_resnet44", 3), ("cifar_resnet56", 3),
             ("cifar_resnet56", 5), ("cifar_resnet110", 5), ("cifar_mobilenet_v2", 3), ("cifar_wrn28_10", 2),
             ("cifar_resnext29_8x64d", 3), ("cifar_densenet_bc100", 4)}  # fmt: skip
    for model, k in paper:
        assert {(model, m, k) for m in ("joint", "relay", "mwbp")} <= rows
        assert (model, "standard", None) in rows
    assert len(recipe.claims) == len(paper)
    raw = dict(recipe.source)
    first = {}
    for e in raw["entries"]:
        first.setdefault((e["train"]["model"], e["train"]["method"]), e)
    # every network once, by MW-BP with the paper's outputs (the other methods step on each network in
    # tests/test_cifar_nets.py); and one claim against its standard baseline
    raw["entries"] = [e for e in first.values() if e["train"]["method"] == "mwbp"]
    raw["entries"].append(next(e for e in recipe.source["entries"] if e["name"] == "r44"))
    raw["claims"] = [{"kind": "final", "mwbp": "r44-2-mwbp", "against": ["r44"]}]
    raw["profile"] = {**raw["profile"], "onnx": False}  # ONNX of each network: tests/test_cifar_nets.py
    (tmp_path / "t1.yaml").write_text(yaml.safe_dump(raw))
    fake_cifar10_py(tmp_path / "cifar", n=20)
    out = tmp_path / "run"
    argv = ["run", str(tmp_path / "t1.yaml"), "--smoke", "--data-dir", str(tmp_path / "cifar"), "--image-size", "8",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert main(["report", str(out)]) == 0
    table = json.loads((out / "report" / "table.json").read_text())
    assert {"ResNet-44", "MW-BP WideResNet-28-10-2, final", "MW-BP DenseNet-BC-100-4, exit 0"} <= {
        row["model"] for row in table
    }


@needs_fmnist
@pytest.mark.parametrize("name", ["fmnist-ablation-nu", "fmnist-ablation-losses"])
def test_ablation_recipes_run_with_smoke_and_test_their_claims(name, tmp_path):
    out = tmp_path / "run"
    assert main(["run", name, "--smoke", "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    claims = json.loads((out / "report" / "claims.json").read_text())
    table = "Table 7" if name.endswith("nu") else "Table 8"
    assert claims["comparisons"] and {r["table"] for r in claims["comparisons"]} == {table}
    assert all(r["verdict"] == "inconclusive" for r in claims["comparisons"])  # one smoke seed decides nothing


def test_download_is_asked_on_the_command_line_into_a_named_folder(tmp_path, capsys):
    from compact.recipes.runner import RunSettings, _data_config

    recipe = parse_recipe(_demo(), "demo.yaml")
    assert "download" not in _data_config(recipe, RunSettings())
    chosen = _data_config(recipe, RunSettings(download=True, data_dir=str(tmp_path / "data")))
    assert chosen["download"] is True and chosen["data_dir"] == str(tmp_path / "data")
    # the stamp of the output folder does not change: a run resumed with --download is the same run
    assert RunSettings(download=True).to_dict() == RunSettings().to_dict()
    assert main(["run", "demo", "--download", "--out", str(tmp_path / "out")]) == 2
    assert "--download needs --data-dir DIR" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
