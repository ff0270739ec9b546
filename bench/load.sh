#!/usr/bin/env bash
# Load benchmark of `bertqa serve` on loopback (not a test), against the same binary answering
# the same questions offline, in one run:
#
# - offline: `bertqa ask --input` on the questions (questions/s, the model load subtracted:
#   an empty input file times the load), and one question at a time, each alone
#   (examples/answer_latency: the compute time of one answer), before and after the server;
# - the server: requests/s and p50/p99 latency at concurrency 1, 8 and 64 (wrk), one question
#   per request;
# - the ratios the server is judged by, as one markdown table (also in $WORK/load.md);
# - a burst of 10x the server's capacity (--max-concurrent-requests), counting statuses.
#
#   bench/load.sh                                   # full run, release build
#   DURATION=3 QUESTIONS=20 bench/load.sh           # a quick check of the script
#
# The machine should be quiet: the load average is printed before and after; re-run if it was
# not near zero. Needs wrk (apt-get install wrk), curl and python3; uses
# ../shared/models/minilm-xquad-qa.
set -euo pipefail

cd "$(dirname "$0")/.."
SHARED=${BERTQA_SHARED:-../shared}
MODEL=${MODEL:-$SHARED/models/minilm-xquad-qa}
DATA=${DATA:-$SHARED/models/minilm-xquad-qa/golden-train.json}
DURATION=${DURATION:-20}        # seconds per concurrency level
QUESTIONS=${QUESTIONS:-200}     # questions for the offline runs (wrk cycles through them too)
ASK_BATCH=${ASK_BATCH:-8}       # `ask --batch-size` (its default)
PORT=${PORT:-18080}
CAPACITY=${CAPACITY:-16}        # --max-concurrent-requests during the burst
THREADS=${THREADS:-}            # --threads for the model (default: all cores)
TARGET=${CARGO_TARGET_DIR:-target}/release
BIN=${BIN:-$TARGET/bertqa}
LATENCY_BIN=${LATENCY_BIN:-$TARGET/examples/answer_latency}
WORK=$(mktemp -d)
SERVER_PID=

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install $tool)" >&2; exit 2; }
done
if [ ! -x "$BIN" ] || [ ! -x "$LATENCY_BIN" ]; then
  cargo build --release --bin bertqa --example answer_latency
fi
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
: >"$WORK/empty.jsonl"

# wrk cycles through the bodies, one question per request. Each wrk thread starts at its own
# part of the list: started at the same place, the threads would walk it in step and the
# requests in flight would be the same few questions (consecutive questions share a context),
# a long context arriving several times at once; independent users do not ask in step.
cat >"$WORK/post.lua" <<'LUA'
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local threads = 0
function setup(thread)
  thread:set("first", threads)
  threads = threads + 1
end
local i
request = function()
  if i == nil then
    i = math.floor((first or 0) * #bodies / tonumber(os.getenv("WRK_THREADS") or "1"))
  end
  i = i % #bodies + 1
  return wrk.format("POST", "/question-answering", {["Content-Type"] = "application/json"}, bodies[i])
end
LUA

seconds() { python3 -c 'import time; print(time.time())'; }

# Seconds `ask --input FILE` takes, model load included.
time_ask() {
  local t0 t1
  t0=$(seconds)
  "$BIN" ask --model "$MODEL" ${THREADS:+--threads $THREADS} --batch-size "$ASK_BATCH" \
    --input "$1" >"$WORK/ask.out"
  t1=$(seconds)
  python3 -c "print($t1 - $t0)"
}

# The host's share of this machine's CPU time since `cpu_times` was read (virtual machines only:
# the time the hypervisor gave to other guests while this one had work, /proc/stat's "steal").
# Figures measured while it is high say little: re-run on a quieter host.
cpu_times() { head -n 1 /proc/stat; }
steal_since() {
  python3 - "$1" "$(cpu_times)" <<'PY'
import sys
before, after = ([int(v) for v in line.split()[1:9]] for line in sys.argv[1:3])
spent = [b - a for a, b in zip(before, after)]
print(f"{100 * spent[7] / max(sum(spent), 1):.0f}%")
PY
}

# One offline round: questions/s of `ask --input` (load subtracted) and ms per answer alone.
offline() {
  local round=$1 load all since
  since=$(cpu_times)
  # An untimed load first: a cold page cache would make the timed load longer than the one
  # inside the real run, and subtracting it would overstate the rate.
  time_ask "$WORK/empty.jsonl" >/dev/null
  load=$(time_ask "$WORK/empty.jsonl")
  all=$(time_ask "$WORK/questions.jsonl")
  python3 -c "
n = $(wc -l <"$WORK/ask.out"); t = $all - $load
print(f'ask --input:   {n} questions in {t:.2f} s after a {$load:.2f} s load: {n / t:.1f} questions/s')
open('$WORK/ask-$round', 'w').write(str(n / t))"
  RAYON_NUM_THREADS=${THREADS:-0} "$LATENCY_BIN" "$MODEL" "$WORK/questions.jsonl" 2 | tee "$WORK/latency-$round.out" |
    sed 's/^/answer_latency: /'
  steal_since "$since" >"$WORK/steal-offline-$round"
  echo "host steal: $(cat "$WORK/steal-offline-$round")"
}

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

run_wrk() {  # concurrency seconds output
  local threads=$(( $1 < 4 ? $1 : 4 ))
  BODIES="$WORK/bodies.txt" WRK_THREADS="$threads" wrk -t "$threads" -c "$1" -d "$2s" --timeout 60s --latency \
    -s "$WORK/post.lua" "http://127.0.0.1:$PORT" >"$3"
}

echo "== $(basename "$MODEL"), $QUESTIONS questions, $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== offline, before the server"
offline 1

echo "== bertqa serve, one question per request, ${DURATION}s per level"
start_server
run_wrk 8 2 "$WORK/warm-up.out"
for c in 1 8 64; do
  since=$(cpu_times)
  run_wrk "$c" "$DURATION" "$WORK/wrk-$c.out"
  steal_since "$since" >"$WORK/steal-$c"
  awk -v c="$c" -v steal="$(cat "$WORK/steal-$c")" '
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = $2 }
    $1 == "99%" { p99 = $2 }
    /Non-2xx/ { errors = $NF }
    END { printf "concurrency %3d: %8s req/s  p50 %9s  p99 %9s  non-2xx %s  host steal %s\n", c, rps, p50, p99, errors + 0, steal }
  ' "$WORK/wrk-$c.out"
done
stop_server

echo "== offline, after the server"
offline 2
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$WORK" <<'PY' | tee "$WORK/load.md"
import re, statistics, sys
work = sys.argv[1]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}

def ms(text):
    value, unit = re.fullmatch(r"([0-9.]+)([a-z]+)", text).groups()
    return float(value) * UNITS[unit]

def wrk(c):
    out = open(f"{work}/wrk-{c}.out").read()
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p50, p99, int(errors.group(1)) if errors else 0

ask = [float(open(f"{work}/ask-{r}").read()) for r in (1, 2)]
alone = [float(re.search(r"median ([0-9.]+) ms", open(f"{work}/latency-{r}.out").read()).group(1))
         for r in (1, 2)]
offline, one = statistics.mean(ask), statistics.mean(alone)
level = {c: wrk(c) for c in (1, 8, 64)}
steal = {name: open(f"{work}/steal-{name}").read().strip()
         for name in ("offline-1", "1", "8", "64", "offline-2")}
print()
print("| | requests/s | p50 | p99 | non-2xx | host steal |")
print("|---|---|---|---|---|---|")
for c, (rps, p50, p99, errors) in level.items():
    print(f"| concurrency {c} | {rps:.1f} | {p50:.1f} ms | {p99:.1f} ms | {errors} | {steal[str(c)]} |")
print(f"| `ask --input`, same questions (before / after) | {ask[0]:.1f} / {ask[1]:.1f} q/s | | | "
      f"| {steal['offline-1']} / {steal['offline-2']} |")
print(f"| one question alone (before / after) | | {alone[0]:.1f} / {alone[1]:.1f} ms | | | |")
print()
print("| ratio | measured | target | |")
print("|---|---|---|---|")
rows = [
    ("server q/s at concurrency 8 / `ask --input` q/s", level[8][0] / offline, ">= 0.95", lambda r: r >= 0.95),
    ("server q/s at concurrency 64 / `ask --input` q/s", level[64][0] / offline, ">= 0.95", lambda r: r >= 0.95),
    ("p50 at concurrency 1 / one answer's compute time", level[1][1] / one, "<= 1.2", lambda r: r <= 1.2),
    ("p99 / p50 at concurrency 8", level[8][2] / level[8][1], "<= 2", lambda r: r <= 2),
]
for name, ratio, target, ok in rows:
    print(f"| {name} | {ratio:.2f}x | {target} | {'met' if ok(ratio) else 'NOT met'} |")
PY

burst=$((CAPACITY * 10))
echo "== burst: $burst requests at once against --max-concurrent-requests $CAPACITY"
start_server --max-concurrent-requests "$CAPACITY"
head -n 1 "$WORK/bodies.txt" >"$WORK/one.json"
seq "$burst" | xargs -P "$burst" -I{} curl -s -o /dev/null -w '%{http_code}\n' \
  -H 'content-type: application/json' --data-binary @"$WORK/one.json" \
  "http://127.0.0.1:$PORT/question-answering" | sort | uniq -c | awk '{ printf "  status %s: %d\n", $2, $1 }'
stop_server
