#!/usr/bin/env bash
# The prepared GPU check of issue 16: one device call, about 7 minutes on an H200 with torch 2.11.
#
#   on the device:  PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh        (carry [".whl"], timeout_s 480)
#   CPU dry run:    OUT=$(mktemp -d) bash benchmarks/gpu_check.sh --dry-run   (under 3 minutes)
#
# 1. Makes atoken importable without touching the machine's torch: the wheels carried in .whl/
#    (pydantic and its needs; see benchmarks/README.md, "The GPU check") go to /tmp/site with pip
#    --no-index --no-deps; atoken and atoken-plugin-3d run from this checkout through PYTHONPATH,
#    with their metadata (version, entry points) written to /tmp/site; atoken's pins are checked
#    against what is importable.
# 2. Runs the CUDA tests: pytest -m gpu over tests/ and packages/atoken-plugin-3d/tests.
# 3. Runs benchmarks/gpu_check.py, which writes $OUT/gpu_check.json and $OUT/summary.txt.
# Everything printed also goes to $OUT/gpu_check.log; the CUDA tests' output to $OUT/pytest_gpu.txt.
# Arguments go to gpu_check.py (--dry-run, --only matmul,inference, --budget-s 300, ...).
# Environment: OUT (default: a new temporary folder), PYTHON (default .venv/bin/python if present,
# else python3), GPU_CHECK_COMMIT (the commit to record: the device copy has no .git),
# GPU_CHECK_TESTS=0 (skip step 2), GPU_CHECK_TESTS_TIMEOUT_S (default 150), GPU_CHECK_TOTAL_S
# (default 450: the whole script's time), GPU_CHECK_SITE (default /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

start=$(date +%s)
log() { printf '[gpu_check.sh %4ss] %s\n' "$(($(date +%s) - start))" "$*"; }

if [[ -n "${PYTHON:-}" ]]; then
    PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
SITE=${GPU_CHECK_SITE:-/tmp/site}
log "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])')), OUT=$OUT"
if command -v nvidia-smi >/dev/null 2>&1; then  # read-only query; the card's settings are left alone
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm --format=csv,noheader ||
        true
fi

# ------------------------------------------------------------------ 1. install
if "$PY" -c 'import pydantic' 2>/dev/null; then
    log "pydantic imports already: carried wheels not needed"
elif compgen -G '.whl/*.whl' >/dev/null; then
    log "installing the carried wheels into $SITE (no index, no deps): $(cd .whl && echo *.whl)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || {
        log "FAILED: pip install of .whl/*.whl"
        exit 3
    }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    log "FAILED: pydantic is not importable and no wheels were carried in .whl/ (see benchmarks/README.md)"
    exit 3
fi
if ! "$PY" -c 'import importlib.metadata as m; m.version("atoken")' 2>/dev/null; then
    mkdir -p "$SITE"
    export PYTHONPATH="$SITE:$PWD:$PWD/packages/atoken-plugin-3d/src${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" benchmarks/gpu_check.py --write-metadata "$SITE" || exit 3
fi
"$PY" benchmarks/gpu_check.py --check-pins || log "WARNING: a pin is not met (see above)"
"$PY" -c 'import atoken, torch; print("atoken", atoken.__version__, "from", atoken.__file__, "| torch", torch.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name())' || {
    log "FAILED: atoken does not import"
    exit 3
}

# ------------------------------------------------------------------ 2. CUDA tests
tests_rc=
if [[ "${GPU_CHECK_TESTS:-1}" != 0 ]]; then
    log "CUDA tests: pytest -m gpu (modules that need PyAV or trimesh fail to collect where those"
    log "are absent; none of them holds a gpu test, so collection errors do not stop the run)"
    timeout "${GPU_CHECK_TESTS_TIMEOUT_S:-150}" "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
        tests packages/atoken-plugin-3d/tests >"$OUT/pytest_gpu.txt" 2>&1
    tests_rc=$?
    tail -n 15 "$OUT/pytest_gpu.txt"
    log "CUDA tests exit status $tests_rc (0 passed, 1 some failed, 5 none selected, 124 timed out)"
fi

# ------------------------------------------------------------------ 3. measurements
# the whole script ends within GPU_CHECK_TOTAL_S (default 450 s, inside a 480 s device call): the
# parts share what is left less a margin (a part started in time may overrun its estimate; the
# JSON is rewritten after every part, so a kill at the limit keeps what was measured)
left=$((${GPU_CHECK_TOTAL_S:-450} - ($(date +%s) - start)))
budget=$((left > 120 ? left - 60 : left / 2))
log "measurements: benchmarks/gpu_check.py --budget-s $budget $* ($left s left in all)"
timeout "$((left > 10 ? left : 10))" "$PY" benchmarks/gpu_check.py --out "$OUT" --budget-s "$budget" \
    ${tests_rc:+--pytest-log "$OUT/pytest_gpu.txt" --pytest-rc "$tests_rc"} "$@"
rc=$?
if [[ $rc -ne 0 && $rc -ne 1 ]]; then  # killed or crashed: show what it had written
    log "gpu_check.py exit status $rc; the summary written so far:"
    cat "$OUT/summary.txt" 2>/dev/null || log "(no summary written)"
fi
log "done, exit status $rc; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
