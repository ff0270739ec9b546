#!/usr/bin/env bash
# Load benchmark of `bertqa serve` on loopback (not a test).
#
# - requests/s and p50/p99 latency at concurrency 1, 8 and 64 (wrk);
# - the same questions answered sequentially by `bertqa ask --input`, for comparison;
# - a burst of 10x the server's capacity (--max-concurrent-requests), counting statuses.
#
#   bench/load.sh                                  # full run, release build
#   DURATION=3 QUESTIONS=20 BIN=target/debug/bertqa bench/load.sh   # a quick check
#
# Needs wrk (apt-get install wrk), curl and python3; uses ../shared/models/minilm-xquad-qa.
set -euo pipefail

cd "$(dirname "$0")/.."
SHARED=${BERTQA_SHARED:-../shared}
MODEL=${MODEL:-$SHARED/models/minilm-xquad-qa}
DATA=${DATA:-$SHARED/models/minilm-xquad-qa/golden-train.json}
DURATION=${DURATION:-20}        # seconds per concurrency level
QUESTIONS=${QUESTIONS:-200}     # questions for the sequential comparison
PORT=${PORT:-18080}
CAPACITY=${CAPACITY:-16}        # --max-concurrent-requests during the burst
THREADS=${THREADS:-}            # --threads for the model (default: all cores)
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/bertqa}
WORK=$(mktemp -d)
SERVER_PID=

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install $tool)" >&2; exit 2; }
done
if [ ! -x "$BIN" ]; then cargo build --release; fi
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The questions as JSONL (for `ask --input`) and one request body per question (for wrk).
python3 - "$DATA" "$QUESTIONS" "$WORK" <<'PY'
import json, sys
data, n, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cases = json.load(open(data))["cases"][:n]
with open(f"{work}/questions.jsonl", "w") as q, open(f"{work}/bodies.txt", "w") as b:
    for c in cases:
        q.write(json.dumps({"id": c["id"], "question": c["question"], "context": c["context"]}) + "\n")
        b.write(json.dumps({"inputs": {"question": c["question"], "context": c["context"]}}) + "\n")
PY

# wrk cycles through the bodies, one question per request.
cat >"$WORK/post.lua" <<'LUA'
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/question-answering", {["Content-Type"] = "application/json"}, bodies[i])
end
LUA

start_server() {
  "$BIN" serve --model "$MODEL" --port "$PORT" ${THREADS:+--threads $THREADS} "$@" \
    2>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 1200); do
    if curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: the server did not become ready" >&2
  exit 1
}
stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=; }

echo "== bertqa serve, $(basename "$MODEL"), one question per request, ${DURATION}s per level"
start_server
for c in 1 8 64; do
  threads=$(( c < 4 ? c : 4 ))
  BODIES="$WORK/bodies.txt" wrk -t "$threads" -c "$c" -d "${DURATION}s" --timeout 60s --latency \
    -s "$WORK/post.lua" "http://127.0.0.1:$PORT" >"$WORK/wrk.out"
  awk -v c="$c" '
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = $2 }
    $1 == "99%" { p99 = $2 }
    /Non-2xx/ { errors = $NF }
    END { printf "concurrency %3d: %8s req/s  p50 %9s  p99 %9s  non-2xx %s\n", c, rps, p50, p99, errors + 0 }
  ' "$WORK/wrk.out"
done
stop_server

echo "== bertqa ask --input: the first $QUESTIONS questions, sequentially in one process"
t0=$(date +%s.%N)
"$BIN" ask --model "$MODEL" ${THREADS:+--threads $THREADS} --batch-size 1 \
  --input "$WORK/questions.jsonl" >"$WORK/ask.out"
t1=$(date +%s.%N)
python3 -c "n = $(wc -l <"$WORK/ask.out"); t = $t1 - $t0; print(f'{n} questions in {t:.2f} s: {n / t:.1f} questions/s (model load included)')"

burst=$((CAPACITY * 10))
echo "== burst: $burst requests at once against --max-concurrent-requests $CAPACITY"
start_server --max-concurrent-requests "$CAPACITY"
head -n 1 "$WORK/bodies.txt" >"$WORK/one.json"
seq "$burst" | xargs -P "$burst" -I{} curl -s -o /dev/null -w '%{http_code}\n' \
  -H 'content-type: application/json' --data-binary @"$WORK/one.json" \
  "http://127.0.0.1:$PORT/question-answering" | sort | uniq -c | awk '{ printf "  status %s: %d\n", $2, $1 }'
stop_server
