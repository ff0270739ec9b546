#!/usr/bin/env bash
# The page's browser test: starts `bertqa serve` on a free loopback port, waits for /health, runs
# page.test.mjs in headless Chromium against it, stops the server. Exits non-zero on any failure.
#
#   tests/browser/run.sh [BERTQA_BINARY]
#
# BERTQA_BINARY (or $BERTQA_BIN) defaults to target/debug/bertqa, as `cargo test` builds it.
# Needs node (20+), `npm ci` run in tests/browser, Chromium at $CHROMIUM (default
# /usr/bin/chromium) and the MiniLM checkpoint in ../shared (or $BERTQA_MODEL).
# SCREENSHOT=path.png saves a picture of the page answering a question.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-${BERTQA_BIN:-$root/target/debug/bertqa}}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

fail() { echo "error: $*" >&2; exit 2; }
[[ -x $bin ]] || fail "no bertqa binary at $bin; build it (cargo build) or pass its path"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
if [[ -n ${BERTQA_MODEL:-} ]]; then
  [[ -d $BERTQA_MODEL ]] || fail "no model at $BERTQA_MODEL"
  model=$(cd "$BERTQA_MODEL" && pwd)
else
  # Relative to the repository, as the README names it (the page shows this name).
  model=../shared/models/minilm-xquad-qa
  [[ -d $root/$model ]] || fail "no model at $root/$model; set BERTQA_MODEL"
fi
cd "$root"
[[ -x $CHROMIUM ]] || fail "no Chromium at $CHROMIUM; apt-get install chromium, or set CHROMIUM"
[[ -d $here/node_modules/playwright-core ]] || fail "playwright-core is not installed; run npm ci in $here"

port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')
log=$(mktemp "${TMPDIR:-/tmp}/bertqa-page-test.XXXXXX.log")
# Limits small enough that the test can pass both in characters and in bytes.
"$bin" serve --model "$model" --host 127.0.0.1 --port "$port" \
  --max-context-chars 20000 --payload-limit 30000 >"$log" 2>&1 &
server=$!
stop() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
}
trap stop EXIT

export BERTQA_URL="http://127.0.0.1:$port"
# Ready once /health answers 200 (after the model's warm-up request); give up if the server
# exits or after 120 s, far more than a start takes.
ready() { node -e 'fetch(process.env.BERTQA_URL + "/health").then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))'; }
for ((waited = 0; ; waited++)); do
  ready && break
  if ! kill -0 "$server" 2>/dev/null || ((waited >= 240)); then
    cat "$log" >&2
    fail "the server did not become ready at $BERTQA_URL"
  fi
  sleep 0.5
done

status=0
(cd "$here" && node page.test.mjs) || status=$?
if [[ $status -ne 0 ]]; then
  echo "--- server log ($log)" >&2
  tail -n 50 "$log" >&2
fi
exit "$status"
