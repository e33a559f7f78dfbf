# Sourced by the scripts beside it: paths, the Python path, carried wheels, and `stage` (a time-limited, logged
# step whose failure does not stop the script). Sets OUT (what travels back; default /tmp/ddpmkit-gpu) and W (work).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-/tmp/ddpmkit-gpu}
W=/tmp/ddpmkit-gpu-work  # everything is written here, then packed into $OUT (few files travel back)
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/cache ] && export DDPMKIT_CACHE="${DDPMKIT_CACHE:-$PWD/.gpu/cache}"
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, report the exit status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$W/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$W/stages.txt"
    return $rc
}

