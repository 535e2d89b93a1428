"""The command line: subcommands listed, exits plan printed, bad input gives one line and status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compact import __version__
from compact.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("models", "methods", "exits"):
        assert cmd in out


def test_version_agrees_with_distribution(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"compact {__version__}"
    assert version("compact") == __version__


def test_methods_and_models(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == sorted(
        ["standard", "joint", "relay", "mwbp", "reverse-mwbp", "naive-mwbp", "naive-reverse-mwbp"]
    )
    assert main(["models", "cifar*"]) == 0
    assert capsys.readouterr().out.split() == [f"cifar_resnet{d}" for d in (110, 20, 32, 44, 56)]


def test_exits_json_for_resnet56(capsys):
    assert main(["exits", "--model", "cifar_resnet56", "--exit-layers", "15,25,35,45", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["depth"] for r in rows] == [15, 25, 35, 45, 56]
    assert [r["params"] for r in rows][-1] == 853018
    assert [r["gamma"] for r in rows] == pytest.approx([1 / 9, 25 / 81, 49 / 81, 1, 1], abs=1e-6)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["exits", "--model", "resnet57", "--exits", "3"], "unknown model 'resnet57'"),
        (["exits", "--model", "cifar_resnet20", "--exits", "12"], "only 9 blocks"),
        (["exits", "--model", "cifar_resnet20", "--exit-blocks", "4,2"], "strictly increasing"),
        (["exits", "--model", "cifar_resnet20", "--exits", "3", "--nu", "0"], "nu must be"),
        (["exits", "--model", "cifar_resnet20", "--exits", "3", "--head", "x"], "valid head types"),
        (["exits", "--model", "cifar_resnet20", "--exits", "3", "--schedule", "x"], "adaptive-2"),
        (["exits", "--model", "cifar_resnet20", "--exits", "3", "--exit-blocks", "2"], "only one of"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_python_dash_m_compact():
    out = subprocess.run([sys.executable, "-m", "compact", "methods"], capture_output=True, text=True, check=True)
    assert "mwbp" in out.stdout
