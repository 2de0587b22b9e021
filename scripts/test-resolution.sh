#!/bin/sh
# Runs the suite with the dependencies re-resolved in a scratch copy of the tree.
#   sh scripts/test-resolution.sh highest        # the newest versions the bounds allow
#   sh scripts/test-resolution.sh lowest-direct  # every direct dependency at its floor
# The committed uv.lock and .venv are not touched. Prints what changed against the lock.
set -eu
resolution=$1; shift
UV=${UV:?UV must name the uv binary}
PYTHON=${PYTHON:-python3}
here=$(pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fabstir-$resolution.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
git ls-files -z | (cd "$here" && xargs -0 tar cf -) | (cd "$scratch" && tar xf -)
cd "$scratch"
export UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT="$scratch/.venv" UV_NO_PROGRESS=1
if [ "$resolution" = highest ]; then
    "$UV" lock --upgrade --python "$PYTHON" --quiet
else
    "$UV" lock --resolution "$resolution" --python "$PYTHON" --quiet
fi
"$UV" sync --frozen --all-extras --python "$PYTHON" --quiet  # the lock made just above
echo "== $resolution: versions that differ from the committed lock"
"$UV" pip freeze --python .venv/bin/python | sort > "$scratch/now.txt"
(cd "$here" && "$UV" export --locked --all-extras --no-hashes --no-emit-project --quiet \
    --python "$PYTHON" | grep -E '^[A-Za-z0-9]' | sed 's/ *;.*//' | sort) > "$scratch/locked.txt" || true
comm -13 "$scratch/locked.txt" "$scratch/now.txt" | grep -v '^-e ' || echo "(none)"
echo "== $resolution: lint, types, tests"
rc=0
.venv/bin/python -m mypy || rc=1
.venv/bin/python -m pytest -q "$@" || rc=$?
exit $rc
