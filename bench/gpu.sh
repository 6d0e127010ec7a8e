# The one command of a GPU loan: install the wheels the device lacks, then `python3 -m bench.gpu` (about 7 min).
#
#   bash bench/gpu.sh                 # from the repo root; report in $OUT/gpu.md (default bench/results/)
#   WHEELS=/tmp/whl311 SITE=/tmp/site311 OUT=/tmp/out PATH=/tmp/devsim/bin:$PATH bash bench/gpu.sh --tiny --device cpu
#
# .whl/ (optional; without it the project must be installed: pip install -e '.[featurize,train]')
# holds the project's own wheel (`pip wheel --no-deps -w .whl .`: the repo's folders import as
# soundception.* only once installed) and the cp312 manylinux wheels of what featurize/ and train/
# import beyond the device's own packages (zarr, numcodecs, donfig, google-crc32c, soundfile, cffi,
# pycparser, soxr); they go to a target folder, not into the device's Python. The bench itself
# (bench/gpu/) runs from the repo root. Extra arguments go to bench.gpu (they come after the
# defaults, so they win). The --budget-s (420 s unless given) stops new measurements; the torch.compile
# row runs last on what is left (killed at the budget); `timeout` ends a hang 90 s after the budget.
# `bash bench/gpu.sh --no-compile` drops the compile row (about 4.5 min then). Short second runs:
#   bash bench/gpu.sh --no-compile --parts b,d --workers 1,2 --budget-s 150   # ~2 min, hard stop at 240 s
# Exit status: bench.gpu's.
if [ -d "${WHEELS:-.whl}" ]; then  # a GPU box without the project installed (no network): carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${SITE:-/tmp/site}" "${WHEELS:-.whl}"/*.whl && export PYTHONPATH="${SITE:-/tmp/site}:$PWD" || exit 1
fi
nvidia-smi -L
OUT="${OUT:-bench/results}"  # the report and log (bench/results/ is git-ignored)
mkdir -p "$OUT"
BUDGET=420  # the last --budget-s among the arguments (bench.gpu takes the last one too)
previous=""
for arg in "$@"; do
  case "$arg" in
    --budget-s=*) BUDGET="${arg#--budget-s=}" ;;
    *) [ "$previous" = "--budget-s" ] && BUDGET="$arg" ;;
  esac
  previous="$arg"
done
LIMIT=$(python3 -c "import sys; print(int(float(sys.argv[1])) + 90)" "$BUDGET") || exit 2
echo "budget ${BUDGET} s, hard stop after ${LIMIT} s"
PYTHONUNBUFFERED=1 timeout -k 10 "$LIMIT" python3 -m bench.gpu --compile --budget-s 420 --out "$OUT/gpu.md" "$@" 2>&1 | tee "$OUT/gpu.log"
exit "${PIPESTATUS[0]}"
