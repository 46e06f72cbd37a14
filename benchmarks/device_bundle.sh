#!/usr/bin/env bash
# Run HERE (with PyPI reachable) before a device call: prepare what benchmarks/device_check.sh needs there into the
# git-ignored folder .device_bundle/ (carry it: "carry": [".device_bundle"]):
#   whl/    CPython 3.12 manylinux x86_64 wheels of the notebook runner (papermill, ipykernel and their dependencies
#           that the device image lacks) and nilearn (its version keys the demo cache; it is never imported there)
#   cache/  UAD_NOTEBOOKS_CACHE: nilearn's MNI152 maps and the small demo splits at 32 and 64 px
# Prints the sizes and fails when the working tree plus the bundle exceed the 64 MiB a device call may send.
#   bash benchmarks/device_bundle.sh                 # PYTHON=.venv/bin/python by default; extra arguments: --help
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m benchmarks.device_check bundle "$@"
