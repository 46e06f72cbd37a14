#!/usr/bin/env bash
# The one command of a GPU session (issue 15): install the carried wheels, then run every device check.
#   bash benchmarks/device_check.sh                      # on the device machine: writes summary + logs to $OUT
#   bash benchmarks/device_check.sh --steps bench        # extra arguments go to `python -m benchmarks.device_check run`
#   DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/dc bash benchmarks/device_check.sh --quick   # the CPU rehearsal
# Environment: OUT (results folder), DEVICE (default cuda), PYTHON (default python3), UAD_DEVICE_BUNDLE (default
# .device_bundle, made here by benchmarks/device_bundle.sh: whl/ and cache/), UAD_DEVICE_SITE (default /tmp/uad_site).
# Exit status: 0 when every step passed, 1 when a step failed, 2 when the wheels could not be installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/uad_device_check_out}
PY=${PYTHON:-python3}
BUNDLE=${UAD_DEVICE_BUNDLE:-.device_bundle}
SITE=${UAD_DEVICE_SITE:-/tmp/uad_site}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "device_check.sh: $(date -u +%FT%TZ) on $(hostname), $("$PY" --version 2>&1), bundle $BUNDLE"
  if compgen -G "$BUNDLE/whl/*.whl" >/dev/null; then
    want=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['python_version'])" "$BUNDLE/MANIFEST.json" 2>/dev/null)
    have=$("$PY" -c "import sys; print('%d.%d' % sys.version_info[:2])")
    if [ "$want" != "$have" ]; then
      echo "device_check.sh: the wheels in $BUNDLE are for Python ${want:-unknown (no MANIFEST.json)}, $PY is $have:" \
           "rebuild them (benchmarks/device_bundle.sh --python-version $have) or point UAD_DEVICE_BUNDLE elsewhere"
      exit 2
    fi
    t0=$(date +%s)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$BUNDLE"/whl/*.whl \
      || { echo "device_check.sh: installing the wheels of $BUNDLE/whl failed"; exit 2; }
    export PYTHONPATH="$SITE:$PYTHONPATH"
    echo "device_check.sh: $(ls "$BUNDLE"/whl/*.whl | wc -l) wheels installed into $SITE in $(( $(date +%s) - t0 )) s"
  else
    echo "device_check.sh: no wheels in $BUNDLE/whl; using the packages already installed"
  fi
  if [ -d "$BUNDLE/cache" ]; then export UAD_NOTEBOOKS_CACHE="$PWD/$BUNDLE/cache"; fi
  echo "device_check.sh: UAD_NOTEBOOKS_CACHE=${UAD_NOTEBOOKS_CACHE:-(default)}"
  "$PY" -m benchmarks.device_check run --device "${DEVICE:-cuda}" --out "$OUT" "$@"
} 2>&1 | tee "$OUT/console.log"
exit "${PIPESTATUS[0]}"
