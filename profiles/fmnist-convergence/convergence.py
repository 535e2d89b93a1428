"""E vs 2E from the report's table.json: python profiles/fmnist-convergence/convergence.py profiles/fmnist-convergence"""

import json, sys
from pathlib import Path
d = Path(sys.argv[1])
rows = {(r["entry"], r["output"]): r["test_error_pct"] for r in json.loads((d / "table.json").read_text())}
lines = ["# Does doubling the epochs change the final test error by less than 0.5 points?", "",
         "Computed from table.json (last epoch of each run, one seed, whole 10,000-image test set).", "",
         "| network, output | 15 epochs | 30 epochs | change (points) | within 0.5 |", "|---|---:|---:|---:|---|"]
for name, e15, e30, k in (("standard ResNet-20, final", "standard-e15", "standard-e30", 0),
                          ("MW-BP ResNet-20, exit 0", "mwbp-e15", "mwbp-e30", 0),
                          ("MW-BP ResNet-20, exit 1", "mwbp-e15", "mwbp-e30", 1),
                          ("MW-BP ResNet-20, final", "mwbp-e15", "mwbp-e30", 2)):
    a, b = rows.get((e15, k)), rows.get((e30, k))
    if a is None or b is None:
        lines.append(f"| {name} | {a if a is not None else '-'} | not finished | - | - |")
    else:
        lines.append(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {'yes' if abs(b - a) < 0.5 else 'no'} |")
# Within the last learning-rate phase (lr /100 from 60% of the epochs: epochs 19-30 of a 30-epoch run), is
# the test error still falling? Least-squares slope over that phase, from curves.json.
curves = json.loads((d / "curves.json").read_text())
lines += ["", "## Still falling at the end of the 30-epoch schedule?", "",
          "Least-squares slope of the test error over epochs 19-30 (lr 0.001, the schedule's last phase), from "
          "curves.json; a slope near 0 says the schedule had stopped improving, not that a longer one would not.", "",
          "| series | epoch 19 | epoch 30 | min..max, 19-30 | slope (points per 10 epochs) |", "|---|---:|---:|---:|---:|"]
for panel in curves["panels"]:
    for sr in panel["series"]:
        if not sr["entry"].endswith("-e30"):
            continue
        pts = [(e, v) for e, v in zip(sr["epochs"], sr["mean"]) if e >= 19]
        xs, ys = [e for e, _ in pts], [v for _, v in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
        lines.append(f"| {sr['label']} | {ys[0]:.2f} | {ys[-1]:.2f} | {min(ys):.2f}..{max(ys):.2f} | {10 * slope:+.2f} |")
(d / "convergence.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
