#!/usr/bin/env bash
# maap end to end on kind: build the images, create the cluster, load the images, then run
# the scenarios of tests/scenarios/scenarios.py (the same steps the real-node tests run here):
# install the chart, the example to Serving with a chat answer in persona, two replicas
# under a rolling restart, preemption and resume, two-pod DeepSpeed, blocked children,
# cleanup. Deletes the cluster at the end.
#
# Needs: a Docker engine, kind, kubectl, helm, curl, python3. Run from anywhere:
#   bash tests/kind/e2e.sh            (or `make e2e-kind`)
# Environment:
#   MAAP_KIND_CLUSTER  cluster name (default maap-e2e)
#   MAAP_IMAGE_TAG     tag of the images built and loaded (default e2e)
#   MAAP_KIND_KEEP=1   keep the cluster afterwards (to look around; delete it yourself)
#   MAAP_SCENARIOS     scenarios to run (default: all of tests/scenarios/scenarios.py)
#   MAAP_SKIP_BUILD=1  use images already built with that tag
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${MAAP_KIND_CLUSTER:-maap-e2e}"
TAG="${MAAP_IMAGE_TAG:-e2e}"
OPERATOR_NS=maap-system
JOBS_NS=maap-scenarios
TRAINER_IMAGE="maap-trainer:${TAG}"
OPERATOR_IMAGE="maap-operator:${TAG}"
CONTEXT="kind-${CLUSTER}"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }
kc() { kubectl --context "${CONTEXT}" "$@"; }

for tool in docker kind kubectl helm python3; do
  command -v "${tool}" >/dev/null || die "${tool} not found on PATH"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

diagnose() {
  say "diagnostics"
  kc get finetunejobs,jobs,pods,pvc,svc -A -o wide || true
  kc -n "${JOBS_NS}" get finetunejobs -o yaml || true
  kc -n "${JOBS_NS}" get events --sort-by=.lastTimestamp | tail -n 40 || true
  kc -n "${OPERATOR_NS}" logs deployment/maap --tail=200 || true
  for pod in $(kc -n "${JOBS_NS}" get pods -o name 2>/dev/null); do
    echo "--- ${pod}"
    kc -n "${JOBS_NS}" logs "${pod}" --tail=80 || true
  done
}

cleanup() {
  local status=$?
  if [[ ${status} -ne 0 ]]; then
    diagnose
  fi
  if [[ "${MAAP_KIND_KEEP:-0}" == 1 ]]; then
    say "keeping cluster ${CLUSTER} (kind delete cluster --name ${CLUSTER})"
  else
    say "deleting cluster ${CLUSTER}"
    kind delete cluster --name "${CLUSTER}" || true
  fi
  exit "${status}"
}

cd "${REPO}"

if [[ "${MAAP_SKIP_BUILD:-0}" != 1 ]]; then
  say "building ${TRAINER_IMAGE} and ${OPERATOR_IMAGE}"
  docker build -f trainer-image/Dockerfile -t "${TRAINER_IMAGE}" .
  docker build -f operator/Dockerfile -t "${OPERATOR_IMAGE}" .
fi

say "creating kind cluster ${CLUSTER}"
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
  die "a kind cluster named ${CLUSTER} exists already; delete it or set MAAP_KIND_CLUSTER"
fi
trap cleanup EXIT
kind create cluster --name "${CLUSTER}" --config kind-config.yaml --wait 180s
kind load docker-image --name "${CLUSTER}" "${TRAINER_IMAGE}" "${OPERATOR_IMAGE}"

say "running the scenarios (tests/scenarios/scenarios.py)"
# pullPolicy Never: the images exist only inside the kind node (kind load).
# shellcheck disable=SC2086
python3 tests/scenarios/scenarios.py --context "${CONTEXT}" \
  --operator-image "${OPERATOR_IMAGE}" --trainer-image "${TRAINER_IMAGE}" \
  --pull-policy Never --namespace "${JOBS_NS}" ${MAAP_SCENARIOS:-}
