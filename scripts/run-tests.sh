#!/usr/bin/env bash
# Runs the whole suite. pytest's exit code 5 (no tests collected) is a failure here.
set -u
PY=${1:-python3}
shift || true
"$PY" -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit $rc
