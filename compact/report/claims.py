"""The paper's claims that a recipe declares, tested on its results by code: nothing in a verdict is typed
by hand.

A recipe lists its claims::

    claims:
      - {kind: exits, mwbp: mwbp, against: [standard-probe, joint, relay]}   # Table 6, per depth
      - {kind: final, mwbp: mwbp, against: [standard, joint, relay]}         # Table 1
      - {kind: pruned, mwbp: mwbp, against: [deep-l1, deep-fpgm, deep-sfp]}  # Table 3

An ablation compares MW-BP networks with each other under the same kinds, naming its table and what it
claims: ``{kind: final, mwbp: nu2, against: [nu0, nu5], table: Table 7, note: "nu = 2 is best"}``.

Each comparison is a paired difference over seeds (:mod:`compact.report.stats`): MW-BP's error minus the
other model's; the claim (MW-BP is better) *holds*, is *reversed* or is *inconclusive*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compact.errors import CompactError
from compact.report.stats import INCONCLUSIVE, paired_difference

#: kind -> (the paper's table, what is claimed)
CLAIM_KINDS = {
    "exits": (
        "Table 6",
        "each auxiliary exit of the MW-BP network has a lower test error than the exit at the same depth",
    ),
    "final": ("Table 1", "the MW-BP network's final output has a lower test error"),
    "pruned": (
        "Table 3",
        "the MW-BP network has a lower test error than a deeper network pruned to its MACs (and, where their "
        "latencies are within 10%, at matched latency)",
    ),
}
CLAIM_KEYS = {"kind", "mwbp", "against", "note", "table"}
#: latencies within this relative difference count as matched (Table 3 at matched latency)
LATENCY_MATCH = 0.10
LATENCY_KEY = "onnxruntime/1"


def check_claims(raw: Any, entries: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Validate a recipe's ``claims`` (``entries``: name -> Entry); every error names the claim."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CompactError(f"{where}: claims must be a list, got {type(raw).__name__}")
    claims = []
    for i, c in enumerate(raw):
        at = f"{where}: claims[{i}]"
        if not isinstance(c, dict):
            raise CompactError(f"{at} must be a mapping with kind, mwbp and against")
        unknown = sorted(map(str, set(c) - CLAIM_KEYS))
        if unknown:
            raise CompactError(f"{at}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(CLAIM_KEYS))}")
        kind = c.get("kind")
        if not isinstance(kind, str) or kind not in CLAIM_KINDS:
            raise CompactError(f"{at}: kind must be one of {', '.join(CLAIM_KINDS)}, got {kind!r}")
        mwbp, against = c.get("mwbp"), c.get("against")
        if not isinstance(against, list) or not against:
            raise CompactError(f"{at}: against must be a non-empty list of entry names")
        for name in [mwbp, *against]:
            if not isinstance(name, str) or name not in entries:
                raise CompactError(
                    f"{at} names entry {name!r}, which the recipe does not define; "
                    f"entries: {', '.join(sorted(entries))}"
                )
        if mwbp in against:
            raise CompactError(f"{at}: against names {mwbp!r}, the entry it is compared with; name other entries")
        if len(set(against)) != len(against):
            raise CompactError(f"{at}: against names an entry twice: {against}")
        if entries[mwbp].kind != "train":
            raise CompactError(f"{at}: mwbp must name a trained entry, {mwbp!r} is a {entries[mwbp].kind} entry")
        for name in against:
            kind_of = entries[name].kind
            if kind_of == "cascade":
                raise CompactError(
                    f"{at}: claims compare trained, probed or pruned models; {name!r} is a cascade entry"
                )
            if kind == "pruned" and kind_of != "prune":
                raise CompactError(
                    f"{at}: a 'pruned' claim compares against pruned entries; {name!r} is a {kind_of} entry"
                )
            if kind != "pruned" and kind_of == "prune":
                raise CompactError(f"{at}: a '{kind}' claim compares networks with exits; {name!r} is a pruned entry")
        table = c.get("table", CLAIM_KINDS[kind][0])
        if not isinstance(table, str) or not 0 < len(table) <= 40 or not table.isprintable():
            raise CompactError(f"{at}: table names the paper's table in a few words (e.g. 'Table 7'), got {table!r}")
        note = c.get("note", "")
        if not isinstance(note, str) or len(note) > 300 or not note.isprintable():
            # a note is a line of the report's Markdown: one line
            raise CompactError(f"{at}: note must be one line of at most 300 characters")
        claims.append({"kind": kind, "mwbp": mwbp, "against": list(against), "note": note, "table": table})
    return claims


def _by_entry(models: Sequence[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for m in models:
        out.setdefault(m.entry, []).append(m)
    return out


def _row(claim: dict, a: Any, b: Any | None, what: str, missing: str = "") -> dict[str, Any]:
    table = claim.get("table") or CLAIM_KINDS[claim["kind"]][0]
    row = {"claim": claim["kind"], "table": table, "comparison": what, "mwbp": a.name if a else None,
           "other": b.name if b else None}  # fmt: skip
    if a is None or b is None or missing:
        return {**row, "n": 0, "mean": None, "low": None, "high": None, "verdict": "missing",
                "note": missing or "no result"}  # fmt: skip
    p = paired_difference(a.by_seed, b.by_seed)
    return {**row, **{k: v for k, v in p.to_dict().items() if k != "seeds"}, "seeds": p.seeds}


def evaluate_claims(claims: Sequence[dict[str, Any]], models: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per comparison: the paired difference (MW-BP minus the other, points of test error), its
    95% interval and the verdict; ``missing`` where a result is absent (an unfinished entry)."""
    entries = _by_entry(models)
    rows: list[dict[str, Any]] = []
    for claim in claims:
        mw = sorted(entries.get(claim["mwbp"], []), key=lambda m: m.output if m.output is not None else -1)
        final = next((m for m in mw if m.is_final), None)
        for other in claim["against"]:
            theirs = entries.get(other, [])
            if claim["kind"] == "exits":
                for m in [m for m in mw if not m.is_final]:
                    same = next((o for o in theirs if o.depth == m.depth and not o.is_final), None)
                    what = f"exit at layer {m.depth}: {claim['mwbp']} vs {other}"
                    gap = f"{other} has no exit at layer {m.depth}" if theirs else f"{other} has no result"
                    rows.append(_row(claim, m, same, what, "" if same else gap))
                if not mw:
                    rows.append(
                        _row(claim, None, None, f"{claim['mwbp']} vs {other}", f"{claim['mwbp']} has no result")
                    )
                continue
            b = next((o for o in theirs if o.is_final), None)
            row = _row(claim, final, b, f"final: {claim['mwbp']} vs {other}")
            if claim["kind"] == "pruned" and final is not None and b is not None:
                row.update(_latency(final, b))
            rows.append(row)
    return rows


def _latency(a: Any, b: Any) -> dict[str, Any]:
    ma, mb = a.latency_ms(LATENCY_KEY), b.latency_ms(LATENCY_KEY)
    if ma is None or mb is None:
        return {"latency_matched": None, "latency_note": "no batch-1 ONNX Runtime latency for both"}
    rel = ma / mb - 1
    matched = abs(rel) <= LATENCY_MATCH
    note = f"batch-1 latency {ma:.3f} vs {mb:.3f} ms ({100 * rel:+.0f}%)"
    return {
        "latency_matched": matched,
        "latency_note": note + ("" if matched else ": not matched, no verdict at matched latency"),
    }


def claims_markdown(rows: Sequence[dict[str, Any]], claims: Sequence[dict[str, Any]], smoke: bool) -> list[str]:
    """The "Paper's claims" section."""
    if not claims:
        return []
    lines = ["## Paper's claims", ""]
    if smoke:
        lines += ["**SMOKE RUN: verdicts computed from one batch of training; they test the code, not the paper.**", ""]
    for table, kind, note in dict.fromkeys((c.get("table") or CLAIM_KINDS[c["kind"]][0], c["kind"], c.get("note"))
                                           for c in claims):  # fmt: skip
        lines.append(f"- {table}: {note or CLAIM_KINDS[kind][1]}.")
    lines += [
        "",
        "Difference = MW-BP's test error minus the other model's, in percentage points, paired by seed (the same "
        "data subset and order); 95% interval from Student's t over the n seeds. *holds*: the interval lies "
        "below 0; *reversed*: above 0; *inconclusive*: it contains 0, or n = 1.",
        "",
        "| claim | comparison | n | difference (pp) | 95% interval | verdict | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "-" if r["mean"] is None else f"{r['mean']:+.2f}"
        ci = "-" if r["low"] is None else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        note = "; ".join(x for x in (r.get("note"), r.get("latency_note")) if x)
        lines.append(f"| {r['table']} | {r['comparison']} | {r['n']} | {diff} | {ci} | **{r['verdict']}** | {note} |")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("holds", "reversed", INCONCLUSIVE, "missing")}
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ".", ""]
    return lines
