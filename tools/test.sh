#!/usr/bin/env bash
# The project's test command (README): the library and the notebooks are in sync, the import contract holds,
# the notebook examples pass (`#| slow` and `#| cuda` cells skipped), and pytest passes.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests never touch the network: model hubs, ultralytics and matplotlib run offline.
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 MPLBACKEND=Agg

# Everything the notebooks and tests write goes to one scratch folder, removed when this command ends
# (DEFECT_SAM_KEEP_TMP=1 keeps it after a failure, for a look at the failed tests' folders).
scratch=$(mktemp -d "${TMPDIR:-/tmp}/defect-sam-test.XXXXXX")
cleanup() {
    status=$?
    if [ "$status" -ne 0 ] && [ "${DEFECT_SAM_KEEP_TMP:-0}" = 1 ]; then
        echo "kept the test scratch folder: $scratch" >&2
    else
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT
export TMPDIR="$scratch"

snapshot() { git diff --no-ext-diff --binary HEAD -- . 2>/dev/null | sha1sum; git ls-files --others --exclude-standard | sha1sum; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    before=$(snapshot)
    nbdev_export
    nbdev_clean
    after=$(snapshot)
    if [ "$before" != "$after" ]; then
        echo "FAIL: nbdev_export or nbdev_clean changed files. The notebooks are the source:" >&2
        echo "run nbdev_export and nbdev_clean, and commit the notebooks with the exported library." >&2
        git status --short >&2
        exit 1
    fi
else
    echo "warning: not a git checkout, skipping the notebook/library sync check" >&2
fi

# The import contract (pyproject.toml [tool.importlinter]): the floors of the library and what each may import.
lint-imports

nbdev_test --n_workers 2 --timing
python -m pytest -q --basetemp="$scratch/pytest" "$@"
