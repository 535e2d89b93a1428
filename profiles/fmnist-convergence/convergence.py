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
(d / "convergence.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
