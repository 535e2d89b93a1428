#!/usr/bin/env bash
# Stage a `compact run` output folder kept in git (profiles/<recipe>/run/) for a commit at the end of a
# sitting: everything .gitignore keeps (results, final models, metrics, logs), plus what the jobs still
# running need to resume (their checkpoint.pt and pruned-init.safetensors), minus those files of jobs that
# have finished since they were last committed. Usage: bash profiles/keep-run.sh profiles/fmnist-converged/run
set -euo pipefail
run=${1:?usage: keep-run.sh RUN_FOLDER}
[ -f "$run/recipe.json" ] || { echo "keep-run.sh: $run is not the output folder of compact run (no recipe.json)" >&2; exit 2; }
git add -A -- "$run"
for job in "$run"/*/seed*/; do
    for f in checkpoint.pt pruned-init.safetensors; do
        if [ -f "$job/done.json" ]; then
            git rm -q --cached --ignore-unmatch -- "$job$f"
        elif [ -f "$job$f" ]; then
            git add -f -- "$job$f"
        fi
    done
done
git status --short -- "$run" | awk '{print $1}' | sort | uniq -c
git ls-files -z -- "$run" | du -cb --files0-from=- | tail -n 1 | awk '{printf "%.1f MB kept in git\n", $1 / 1e6}'
