#!/usr/bin/env bash
# maap end to end on kind: build the images, create the cluster, install the chart, copy
# the example data set onto the artifacts volume, run examples/smollm2-lora.yaml until it
# serves, ask the chat API one question, print the answer, delete the cluster.
#
# Needs: a Docker engine, kind, kubectl, helm, curl, python3. Run from anywhere:
#   bash tests/kind/e2e.sh            (or `make e2e-kind`)
# Environment:
#   MAAP_KIND_CLUSTER  cluster name (default maap-e2e)
#   MAAP_IMAGE_TAG     tag of the images built and loaded (default e2e)
#   MAAP_KIND_KEEP=1   keep the cluster afterwards (to look around; delete it yourself)
#   MAAP_E2E_TIMEOUT   seconds to wait for Serving (default 2700)
#   MAAP_SKIP_BUILD=1  use images already built with that tag
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${MAAP_KIND_CLUSTER:-maap-e2e}"
TAG="${MAAP_IMAGE_TAG:-e2e}"
TIMEOUT="${MAAP_E2E_TIMEOUT:-2700}"
OPERATOR_NS=maap-system
JOBS_NS=maap-e2e
JOB=smollm2-pirate
LOCAL_PORT=18000
TRAINER_IMAGE="maap-trainer:${TAG}"
OPERATOR_IMAGE="maap-operator:${TAG}"
CONTEXT="kind-${CLUSTER}"
PORT_FORWARD_PID=""

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }
kc() { kubectl --context "${CONTEXT}" "$@"; }

for tool in docker kind kubectl helm curl python3; do
  command -v "${tool}" >/dev/null || die "${tool} not found on PATH"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

diagnose() {
  say "diagnostics"
  kc get finetunejobs,jobs,pods,pvc,svc -A -o wide || true
  kc -n "${JOBS_NS}" get finetunejob "${JOB}" -o yaml || true
  kc -n "${JOBS_NS}" get events --sort-by=.lastTimestamp | tail -n 40 || true
  kc -n "${OPERATOR_NS}" logs deployment/maap --tail=200 || true
  for pod in $(kc -n "${JOBS_NS}" get pods -o name 2>/dev/null); do
    echo "--- ${pod}"
    kc -n "${JOBS_NS}" logs "${pod}" --tail=80 || true
  done
}

cleanup() {
  local status=$?
  if [[ -n "${PORT_FORWARD_PID}" ]]; then
    kill "${PORT_FORWARD_PID}" 2>/dev/null || true
  fi
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

say "installing the chart"
# pullPolicy Never: the images exist only inside the kind node (kind load).
helm --kube-context "${CONTEXT}" install maap charts/maap \
  --namespace "${OPERATOR_NS}" --create-namespace \
  --set image.repository=maap-operator --set image.tag="${TAG}" \
  --set image.pullPolicy=Never \
  --set trainer.image.repository=maap-trainer --set trainer.image.tag="${TAG}" \
  --set trainer.image.pullPolicy=Never \
  --wait --timeout 5m

say "copying examples/pirate-chat onto the artifacts volume"
kc create namespace "${JOBS_NS}"
sed "s|MAAP_TRAINER_IMAGE|${TRAINER_IMAGE}|" tests/kind/data-volume.yaml | kc -n "${JOBS_NS}" apply -f -
kc -n "${JOBS_NS}" wait --for=condition=Ready pod/maap-data-loader --timeout=5m
kc -n "${JOBS_NS}" cp examples/pirate-chat maap-data-loader:/workspace/pirate-chat
kc -n "${JOBS_NS}" exec maap-data-loader -- ls -l /workspace/pirate-chat
kc -n "${JOBS_NS}" delete pod maap-data-loader --wait=true

say "applying examples/smollm2-lora.yaml (artifacts on maap-e2e-artifacts)"
kubectl kustomize --load-restrictor LoadRestrictionsNone tests/kind | kc -n "${JOBS_NS}" apply -f -

say "waiting for ${JOB} to serve (at most ${TIMEOUT}s)"
deadline=$((SECONDS + TIMEOUT))
last=""
while true; do
  # A transient API error is one missed poll, not a failed run.
  phase="$(kc -n "${JOBS_NS}" get finetunejob "${JOB}" -o jsonpath='{.status.phase}' || true)"
  progress="$(kc -n "${JOBS_NS}" get finetunejob "${JOB}" \
    -o jsonpath='{.status.progress.percent}' || true)"
  line="phase=${phase:-none} progress=${progress:-?}%"
  if [[ "${line}" != "${last}" ]]; then
    printf '%s  %s\n' "$(date +%T)" "${line}"
    last="${line}"
  fi
  case "${phase}" in
    Serving) break ;;
    Failed | Succeeded)
      kc -n "${JOBS_NS}" get finetunejob "${JOB}" \
        -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
      die "${JOB} ended ${phase} instead of Serving"
      ;;
  esac
  ((SECONDS < deadline)) || die "${JOB} not Serving after ${TIMEOUT}s"
  sleep 10
done
kc -n "${JOBS_NS}" rollout status "deployment/${JOB}-server" --timeout=5m

say "asking the model"
kc -n "${JOBS_NS}" port-forward "service/${JOB}-server" "${LOCAL_PORT}:8000" >/dev/null &
PORT_FORWARD_PID=$!
request='{"model": "smollm2-pirate", "temperature": 0, "max_tokens": 64,
  "messages": [{"role": "user", "content": "Why is the sky blue?"}]}'
response="$(curl -sS --fail-with-body --retry 20 --retry-delay 2 --retry-all-errors \
  "http://127.0.0.1:${LOCAL_PORT}/v1/chat/completions" \
  -H 'Content-Type: application/json' -d "${request}")"
answer="$(printf '%s' "${response}" | python3 -c \
  'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"].strip())')"
[[ -n "${answer}" ]] || die "empty answer: ${response}"
printf 'QUESTION: Why is the sky blue?\nANSWER: %s\n' "${answer}"
