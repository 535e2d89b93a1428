"""Packaging and CI: the wheel and sdist ship what an installed compact needs, the GitHub workflow is valid
and runs what README.md and .ci/run run, and the version comes from one place."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import yaml

import compact

from _helpers import fake_cifar10_py

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def _quick_start() -> list[str]:
    """The commands of README's Quick start code blocks, in order (comment lines dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]


def _ci_run_lines() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def _workflow(text: str | None = None) -> dict:
    data = yaml.safe_load(WORKFLOW.read_text() if text is None else text)
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _run_steps(job: dict) -> list[str]:
    return [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines()]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_ci_runs_readme_test_command_verbatim():
    commands = _quick_start()
    assert len(commands) == 2, commands
    assert commands[1] in _ci_run_lines()


def test_workflow_is_valid_by_the_github_workflow_schema():
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflow_has_no_zizmor_findings():
    zizmor = Path(sysconfig.get_path("scripts")) / "zizmor"
    out = subprocess.run(
        [str(zizmor), "--offline", "--persona", "pedantic", "--no-progress", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


#: the contexts a workflow expression may name (GitHub's "Contexts" reference)
CONTEXTS = set("github env vars job jobs steps runner secrets strategy matrix needs inputs".split())


def _expression_problems(wf: dict) -> list[str]:
    """Names in ``${{ }}`` expressions that are not a context, or not a key of the job's matrix: the
    mistakes that the schema and zizmor let through (actionlint's expression check, in small)."""
    problems = []
    for name, job in wf["jobs"].items():
        keys = set(job.get("strategy", {}).get("matrix", {}))
        for expr in re.findall(r"\$\{\{(.*?)\}\}", yaml.safe_dump(job)):
            for root, attr in re.findall(r"\b([A-Za-z_]\w*)\.([\w-]+)", expr):
                if root not in CONTEXTS:
                    problems.append(f"{name}: unknown context {root!r} in ${{{{{expr}}}}}")
                elif root == "matrix" and attr not in keys:
                    problems.append(f"{name}: matrix has no key {attr!r} (keys: {sorted(keys)})")
    return problems


def test_workflow_expressions_name_defined_contexts_and_matrix_keys():
    wf = _workflow()
    assert _expression_problems(wf) == []
    typo = _workflow(WORKFLOW.read_text().replace("matrix.python-version", "matrix.pyton-version"))
    assert any("no key 'pyton-version'" in p for p in _expression_problems(typo))


def test_workflow_runs_what_readme_and_ci_run_run():
    wf = _workflow()
    assert set(wf["on"]) == {"push", "pull_request"}
    job = wf["jobs"]["test"]
    # the Python versions are the ones the package declares
    classifiers = _pyproject()["project"]["classifiers"]
    declared = sorted(c.rsplit(":: ", 1)[1] for c in classifiers if re.fullmatch(r".*Python :: 3\.\d+", c))
    assert job["strategy"]["matrix"]["python-version"] == declared == ["3.10", "3.11", "3.12"]
    assert job["runs-on"].startswith("ubuntu")
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip"
    runs = _run_steps(job)
    # CPU-only torch from PyTorch's index, Fashion-MNIST from the distribution's package
    assert any("torch" in r and "--index-url https://download.pytorch.org/whl/cpu" in r for r in runs)
    assert any("apt-get install" in r and "dataset-fashion-mnist" in r for r in runs)
    # README's test command (command 2 ends with it, run from its virtualenv)
    test_command = _quick_start()[1].rsplit(" && ", 1)[1].replace(".venv/bin/", "")
    assert test_command in runs
    # the demo smoke run, its report and the lint commands are the ones .ci/run runs
    ci = [line.replace(".venv/bin/", "") for line in _ci_run_lines()]
    for needed in ("compact run ", "compact report ", "ruff check", "ruff format --check"):
        in_ci = [line for line in ci if line.startswith(needed)]
        assert in_ci and all(line in runs for line in in_ci), needed
    assert any("--smoke" in line for line in ci if line.startswith("compact run "))
    # the report folder goes to the job summary and into an artifact
    report_dir = next(r for r in runs if r.startswith("compact report ")).split("--out ", 1)[1].split()[0]
    assert f'cat {report_dir}/summary.md >> "$GITHUB_STEP_SUMMARY"' in runs
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"].rstrip("/") == report_dir
    # every action is pinned to a commit
    for step in (s for j in wf["jobs"].values() for s in j["steps"] if "uses" in s):
        assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


def test_package_list_covers_every_package_of_the_tree():
    setuptools = _pyproject()["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "compact").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"compact.baselines"}
    assert setuptools["package-dir"] == {"compact.baselines": "baselines"}


def _site_packages() -> list[str]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(p for p in paths if Path(p).is_dir())


def test_wheel_and_sdist_ship_the_package_and_an_installed_wheel_runs(tmp_path):
    """`python -m build` (sdist, then the wheel built from the sdist), then the wheel in a fresh virtualenv."""
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("compact-*.whl")
    (sdist,) = dist.glob("compact-*.tar.gz")
    assert wheel.name.startswith(f"compact-{compact.__version__}-py3-none-any")

    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "compact").rglob("*.py")}
    recipes = {f"compact/baselines/{p.name}" for p in (ROOT / "baselines").glob("*.yaml")}
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "compact" / "configs").glob("*.yaml")}
    assert recipes and configs
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    missing = (sources | recipes | configs | {"compact/baselines/__init__.py"}) - in_wheel
    assert not missing, f"not in the wheel: {sorted(missing)}"
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("pyproject.toml", "README.md", "baselines/demo.yaml", "compact/configs/paper-cifar.yaml"):
        assert needed in in_sdist, needed

    # a fresh virtualenv with only the wheel installed; its dependencies come from this environment's
    # site-packages, added by a .pth file (path lines are not processed further, so an editable install of
    # compact here stays invisible there)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    target = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(target) / "_deps_from_test_env.pth").write_text("\n".join(_site_packages()) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    work = tmp_path / "work"  # not the checkout: nothing may come from the source tree
    work.mkdir()

    def run(*args: str) -> str:
        out = subprocess.run([str(venv / "bin" / "compact"), *args], cwd=work, env=env, capture_output=True, text=True)
        assert out.returncode == 0, f"compact {' '.join(args)}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        return out.stdout

    where = subprocess.run(
        [str(py), "-c", "import compact; print(compact.__file__)"], cwd=work, env=env, capture_output=True, text=True
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    assert "train-mwbp" in run("--help")
    assert run("--version").strip() == f"compact {compact.__version__}"
    assert "demo" in run("recipes")  # loads and validates every shipped recipe
    assert "paper-cifar" in run("configs")
    fake_cifar10_py(work / "data")
    out = run("train-mwbp", "--smoke", "--model", "cifar_resnet20", "--exits", "2", "--config", "paper-cifar",
              "--data-dir", "data", "--out", "run", "--no-progress", "--device", "cpu")  # fmt: skip
    assert "smoke run" in out
    assert (work / "run" / "model.safetensors").is_file()
    stored = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert stored["data"] == "cifar10" and stored["epochs"] == 1 and stored["nesterov"] is True


def test_keep_run_stages_results_and_the_checkpoints_of_unfinished_jobs_only(tmp_path):
    """profiles/keep-run.sh with the repository's .gitignore: a run folder goes into git with its results and
    final models, the checkpoint of a job still running (so the next sitting resumes it), and nothing that
    `compact run` makes again; a job that finished since the last commit loses its checkpoint from git."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    run = tmp_path / "profiles" / "r" / "run"
    files = {
        "recipe.json": "kept",
        "a/seed0/done.json": "kept",
        "a/seed0/model.safetensors": "kept",
        "a/seed0/metrics.jsonl": "kept",
        "a/seed0/exports/output0.profile.json": "kept",
        "a/seed0/checkpoint.pt": "dropped",  # finished: the optimizer state is for resuming only
        "a/seed0/exports/output0.safetensors": "dropped",  # exported again by compact run
        "a/seed0/tensorboard/events": "dropped",
        "a/seed0/.running.lock": "dropped",
        "a/seed0/.model.safetensors.x1.tmp": "dropped",
        "c/seed0/done.json": "kept",
        "c/seed0/cascade.json": "kept",
        "c/seed0/cascade/segment0.onnx": "dropped",  # exported again before timing
        "p/seed0/plan.json": "kept",
        "p/seed0/checkpoint.pt": "kept",  # still fine-tuning: needed to resume
        "p/seed0/pruned-init.safetensors": "kept",
    }
    for rel, _ in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(rel)
    script = ROOT / "profiles" / "keep-run.sh"

    def keep() -> set[str]:
        subprocess.run(["bash", str(script), "profiles/r/run"], cwd=tmp_path, check=True, capture_output=True)
        listed = subprocess.run(["git", "ls-files"], cwd=tmp_path, check=True, capture_output=True, text=True)
        return {line.removeprefix("profiles/r/run/") for line in listed.stdout.split()} - {".gitignore"}

    assert keep() == {rel for rel, what in files.items() if what == "kept"}
    subprocess.run([*git, "commit", "-qm", "sitting 1"], cwd=tmp_path, check=True)
    (run / "p" / "seed0" / "done.json").write_text("{}")  # the pruning job finished in the next sitting
    assert keep() == {rel for rel, what in files.items() if what == "kept"} - {
        "p/seed0/checkpoint.pt",
        "p/seed0/pruned-init.safetensors",
    } | {"p/seed0/done.json"}
    assert (run / "p" / "seed0" / "checkpoint.pt").is_file()  # out of git, not off the disk
    bad = subprocess.run(["bash", str(script), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "is not the output folder of compact run" in bad.stderr
