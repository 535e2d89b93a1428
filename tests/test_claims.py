"""Paired statistics and the paper's claims: numbers checked against hand computation, verdicts for a
clear win, a clear loss and a tie, and the claims a recipe may declare."""

from __future__ import annotations

import math

import pytest

from compact.errors import CompactError
from compact.recipes import parse_recipe
from compact.report.claims import evaluate_claims
from compact.report.collect import Model
from compact.report.stats import paired_difference

T_975_DF2 = 4.302653  # Student's t, 0.975 quantile, 2 degrees of freedom (printed tables)


def test_paired_interval_equals_a_hand_computation():
    a = {0: 10.0, 1: 12.0, 2: 11.0}
    b = {0: 11.0, 1: 13.5, 2: 12.5}
    p = paired_difference(a, b)  # differences -1.0, -1.5, -1.5
    mean = -4 / 3
    sd = math.sqrt(((1 / 3) ** 2 + 2 * (1 / 6) ** 2) / 2)
    half = T_975_DF2 * sd / math.sqrt(3)
    assert (p.n, p.seeds) == (3, [0, 1, 2])
    assert p.mean == pytest.approx(mean) and p.low == pytest.approx(mean - half, abs=1e-5)
    assert p.high == pytest.approx(mean + half, abs=1e-5)
    assert p.verdict == "holds"  # the whole interval lies below 0: a has the lower error


@pytest.mark.parametrize(
    "a, b, verdict",
    [
        ({0: 10.0, 1: 10.2, 2: 9.9}, {0: 12.0, 1: 12.1, 2: 11.8}, "holds"),  # a clear win
        ({0: 12.0, 1: 12.1, 2: 11.8}, {0: 10.0, 1: 10.2, 2: 9.9}, "reversed"),  # a clear loss
        ({0: 10.0, 1: 12.0, 2: 11.0}, {0: 11.0, 1: 11.0, 2: 11.5}, "inconclusive"),  # a tie
    ],
)
def test_verdicts(a, b, verdict):
    assert paired_difference(a, b).verdict == verdict


def test_one_seed_or_no_common_seed_is_inconclusive_and_says_why():
    one = paired_difference({0: 10.0}, {0: 20.0})
    assert (one.n, one.verdict, one.low) == (1, "inconclusive", None) and "one seed" in one.note
    none = paired_difference({0: 10.0}, {1: 20.0})
    assert (none.n, none.verdict) == (0, "inconclusive") and "no seed in common" in none.note
    # unequal seed sets: only the common seeds are paired
    assert paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {1: 2.5, 2: 3.5}).seeds == [1, 2]


def _model(entry, output, num_outputs, depth, errors, kind="train", latency=None):
    m = Model(entry, entry, kind, "x", output, num_outputs, depth)
    m.by_seed = dict(enumerate(errors))
    m.errors = list(errors)
    m.latency = latency or {}
    return m


def test_claims_compare_exits_of_equal_depth_and_pruned_models_at_matched_latency():
    models = [
        _model("mwbp", 0, 3, 7, [30.0, 31.0, 29.0]),
        _model("mwbp", 1, 3, 13, [20.0, 21.0, 20.5]),
        _model("mwbp", 2, 3, 20, [10.0, 10.5, 10.2], latency={"onnxruntime/1": [1.0, 1.0, 1.0]}),
        _model("probe", 0, 3, 7, [35.0, 36.0, 34.5], kind="probe"),  # no exit at layer 13
        _model("probe", 2, 3, 20, [11.0, 11.0, 11.0], kind="probe"),
        _model("l1", None, 1, None, [10.0, 10.5, 10.2], kind="prune", latency={"onnxruntime/1": [1.05] * 3}),
        _model("sfp", None, 1, None, [12.0, 12.5, 12.2], kind="prune", latency={"onnxruntime/1": [2.0] * 3}),
    ]
    claims = [
        {"kind": "exits", "mwbp": "mwbp", "against": ["probe"]},
        {"kind": "pruned", "mwbp": "mwbp", "against": ["l1", "sfp"]},
    ]
    rows = evaluate_claims(claims, models)
    exits = [r for r in rows if r["claim"] == "exits"]
    assert [(r["comparison"], r["verdict"]) for r in exits] == [
        ("exit at layer 7: mwbp vs probe", "holds"),
        ("exit at layer 13: mwbp vs probe", "missing"),
    ]
    assert exits[0]["mean"] == pytest.approx(-5.1666667)
    assert exits[1]["note"] == "probe has no exit at layer 13"
    unfinished = evaluate_claims([{"kind": "exits", "mwbp": "mwbp", "against": ["joint"]}], models)
    assert [r["note"] for r in unfinished] == ["joint has no result"] * 2  # not "no exit": nothing finished yet
    pruned = {r["other"]: r for r in rows if r["claim"] == "pruned"}
    assert pruned["l1"]["verdict"] == "inconclusive" and pruned["l1"]["mean"] == 0  # identical errors: a tie
    assert pruned["l1"]["latency_matched"] is True and pruned["sfp"]["latency_matched"] is False
    assert pruned["sfp"]["verdict"] == "holds"


def test_latency_over_seeds_is_the_median_so_one_slow_seed_does_not_unmatch():
    # one seed of l1 timed in a slow phase of the machine (2.0 ms): the mean (1.37) would call the pair
    # unmatched; the median (1.05) is within 10% of MW-BP's 1.0 ms
    a = _model("mwbp", None, 1, None, [10.0, 10.5, 10.2], latency={"onnxruntime/1": [1.0, 0.98, 1.01]})
    b = _model("l1", None, 1, None, [10.0, 10.5, 10.2], kind="prune", latency={"onnxruntime/1": [1.05, 2.0, 1.04]})
    assert b.latency_ms("onnxruntime/1") == 1.05 and b.latency_ms("pytorch/1") is None
    (row,) = evaluate_claims([{"kind": "pruned", "mwbp": "mwbp", "against": ["l1"]}], [a, b])
    assert row["latency_matched"] is True and "1.000 vs 1.050 ms (-5%)" in row["latency_note"]
    assert b.summary()["latency_ms_onnxruntime_b1"] == 1.05


DEMO = {
    "name": "d",
    "entries": [
        {"name": "mwbp", "train": {"model": "cifar_resnet20", "method": "mwbp", "exits": 3}},
        {"name": "std", "train": {"model": "cifar_resnet20", "method": "standard"}},
        {"name": "l1", "prune": {"from": "std", "method": "l1", "match": "mwbp:final"}},
    ],
}


@pytest.mark.parametrize(
    "claims, message",
    [
        ([{"kind": "exits", "mwbp": "mwbp", "against": ["nowhere"]}], "names entry 'nowhere', which the recipe"),
        ([{"kind": "table9", "mwbp": "mwbp", "against": ["std"]}], "kind must be one of exits, final, pruned"),
        ([{"kind": "pruned", "mwbp": "mwbp", "against": ["std"]}], "compares against pruned entries"),
        ([{"kind": "final", "mwbp": "mwbp", "against": ["l1"]}], "is a pruned entry"),
        ([{"kind": "final", "mwbp": "l1", "against": ["std"]}], "mwbp must name a trained entry"),
        ([{"kind": "final", "mwbp": "mwbp", "against": []}], "against must be a non-empty list"),
        ({"kind": "final"}, "claims must be a list"),
        ([{"kind": "final", "mwbp": "mwbp", "against": ["std", "mwbp"]}], "the entry it is compared with"),
        ([{"kind": "final", "mwbp": "mwbp", "against": ["std", "std"]}], "names an entry twice"),
        # found by mutation fuzzing: unhashable kinds and non-text keys were internal TypeErrors
        ([{"kind": {}, "mwbp": "mwbp", "against": ["std"]}], r"kind must be one of .* got \{\}"),
        ([{"kind": "final", "mwbp": "mwbp", "against": ["std"], 3: "x", "y": 1}], r"unknown key\(s\) 3, y"),
        ([{"kind": "final", "mwbp": "mwbp", "against": ["std"], "note": "a\n| b"}], "note must be one line"),
        ([{"kind": "final", "mwbp": "mwbp", "against": ["std"], "table": "T\n7"}], "table names the paper's"),
    ],
)
def test_recipe_claims_are_validated(claims, message):
    with pytest.raises(CompactError, match=message):
        parse_recipe({**DEMO, "claims": claims}, "r.yaml")


def test_exit_table_of_networks_with_different_layouts_keeps_final_outputs_in_one_column():
    """Table 8: 2, 3 and 5 outputs on one network put output k at different layers, and output 1 is the
    final output of one and an exit of the others. Each row then names its own layers and every final
    output lands in the last column; one shared layout keeps the per-column layer headers."""
    from compact.recipes import parse_recipe
    from compact.report.collect import RunResults
    from compact.report.tables import exits_table

    recipe = parse_recipe({"name": "t8", "entries": [{"name": "x", "train": {"model": "cifar_resnet20"}}]})
    mixed = [
        _model("o2", 0, 2, 11, [8.2]),
        _model("o2", 1, 2, 20, [7.6]),
        _model("o3", 0, 3, 7, [15.6]),
        _model("o3", 1, 3, 13, [8.2]),
        _model("o3", 2, 3, 20, [7.7]),
    ]
    table = exits_table(RunResults(recipe, {}, mixed, [], [0]))["markdown"].splitlines()
    assert table[0] == "| method | layers | exit 0 | exit 1 | final |"
    assert table[2] == "| o2 | 11, 20 | 8.20 | - | 7.60 |"
    assert table[3] == "| o3 | 7, 13, 20 | 15.60 | 8.20 | 7.70 |"
    same = [m for m in mixed if m.entry == "o3"] + [
        _model("nu0", k, 3, d, [e]) for k, d, e in ((0, 7, 11.1), (2, 20, 8.0))
    ]
    table = exits_table(RunResults(recipe, {}, same, [], [0]))["markdown"].splitlines()
    assert table[0] == "| method | output 0 (layer 7) | output 1 (layer 13) | output 2 (layer 20) |"
    assert table[3] == "| nu0 | 11.10 | - | 8.00 |"  # an output with no result yet is a dash, not a shift
