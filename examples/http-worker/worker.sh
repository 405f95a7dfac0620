#!/usr/bin/env bash
# A jobq worker in shell, over the HTTP lease protocol (README: "HTTP workers"): it serves the
# `echo` job type (the result is the payload), side by side with jobq's own workers, and fails
# a job whose payload is {"fail": "why"} for good.
#   JOBQ_URL=http://127.0.0.1:8080 JOBQ_TOKEN=$(jobq token) ./worker.sh
# Needs curl and jq. Stops after IDLE_EXITS empty waits in a row (0: never).
set -euo pipefail
: "${JOBQ_URL:?set JOBQ_URL}" "${JOBQ_TOKEN:?set JOBQ_TOKEN (a token with the jobs:work scope)}"
QUEUE=${QUEUE:-default}
IDLE_EXITS=${IDLE_EXITS:-0}

api() {  # api PATH JSON -> prints the body; fails on a non-2xx other than 204
  curl -sS --fail-with-body -X POST "$JOBQ_URL$1" \
    -H "Authorization: Bearer $JOBQ_TOKEN" -H 'Content-Type: application/json' -d "$2"
}

idle=0
while true; do
  leased=$(api /v1/leases "{\"queues\": [\"$QUEUE\"], \"types\": [\"echo\"], \"max_jobs\": 5, \"wait_seconds\": 2}")
  if [ -z "$leased" ]; then  # 204: nothing came within the wait
    idle=$((idle + 1))
    if [ "$IDLE_EXITS" -gt 0 ] && [ "$idle" -ge "$IDLE_EXITS" ]; then exit 0; fi
    continue
  fi
  idle=0
  echo "$leased" | jq -c '.items[]' | while read -r job; do
    id=$(jq -r .id <<<"$job")
    lease=$(jq -r .lease_id <<<"$job")
    if why=$(jq -er '.payload.fail? // empty | strings' <<<"$job"); then
      body=$(jq -n --arg l "$lease" --arg m "$why" '{lease_id: $l, message: $m, retryable: false}')
      api "/v1/jobs/$id/fail" "$body" >/dev/null
      echo "failed $id"
    else
      body=$(jq -c --arg l "$lease" '{lease_id: $l, result: .payload}' <<<"$job")
      api "/v1/jobs/$id/complete" "$body" >/dev/null
      echo "completed $id"
    fi
  done
done
