#!/usr/bin/env bash
# The Kubernetes manifests validate offline against the API schemas
# (kubernetes-validate --strict, PyPI, pinned in requirements.txt; skipped
# with 77 without the venv), and every pod that runs one of our services
# mounts its role's key and the allow folder.
BIN=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KV=$ROOT/.venv-test/bin/kubernetes-validate
if [[ ! -x $KV ]]; then
  echo "skipped: no kubernetes-validate in .venv-test (scripts/setup installs it)"
  exit 77
fi
set -euo pipefail
cd "$ROOT/deploy/k8s"
files=()
for f in *.yaml; do
  [[ $f == kustomization.yaml ]] || files+=("$f")
done
"$KV" --strict "${files[@]}"
for f in coordinator encoder stages; do
  role=$f; [[ $f == stages ]] && role=stage
  grep -q -- "--key.*/etc/sa-cluster/key/$role.key" "$f.yaml" || { echo "FAIL: $f.yaml passes no $role key"; exit 1; }
  grep -q "secretName: sa-key-$role" "$f.yaml" || { echo "FAIL: $f.yaml mounts no sa-key-$role"; exit 1; }
  grep -q "secretName: sa-allow" "$f.yaml" || { echo "FAIL: $f.yaml mounts no allow folder"; exit 1; }
done
echo "ok: ${#files[@]} manifests valid (--strict); every service mounts its key and the allow folder"
