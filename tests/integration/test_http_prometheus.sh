#!/usr/bin/env bash
# A real Prometheus (Debian's) scrapes the coordinator's /metrics; its query
# API then reports sa_requests_total{outcome="ok"} equal to the requests this
# test made, and the target as up.
BIN=$1
source "$(dirname "$0")/lib.sh"
command -v prometheus >/dev/null || fail "prometheus is missing (scripts/setup installs it)"

M=$T/model
make_model "$M" 41
start_coordinator "$M" --http 127.0.0.1:0 --served-model-name tiny
start_encoder "$M" encoder0
start_worker "$M" 0: r0 s0
wait_ready 1 1
URL=$(grep -ao '^http http://[^ ]*' "$T/coordinator.log" | head -n 1 | cut -d' ' -f2)
[[ -n $URL ]] || fail "the coordinator did not print its HTTP URL"

N=3
for i in $(seq $N); do
  code=$(curl -s -o "$T/r$i.json" -w '%{http_code}' "$URL/v1/chat/completions" \
    -d "{\"model\":\"tiny\",\"max_tokens\":2,\"messages\":[{\"role\":\"user\",\"content\":\"n$i\"}]}")
  [[ $code == 200 ]] || fail "request $i: HTTP $code $(cat "$T/r$i.json")"
done
# a refused request is not an ended one
curl -s -o /dev/null "$URL/v1/chat/completions" -d '{"model":"tiny","messages":[]}'

PP=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$T/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: sa
    metrics_path: /metrics
    static_configs: [{targets: ["${URL#http://}"]}]
YML
prometheus --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/prom" \
  --web.listen-address="127.0.0.1:$PP" >"$T/prometheus.log" 2>&1 &
PIDS+=($!)
PROM="http://127.0.0.1:$PP"

query() { # PROMQL -> the first sample's value, or empty
  curl -s --get "$PROM/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' \
    2>/dev/null || true
}
got="" up=""
for _ in $(seq 150); do   # bounded: a scrape a second
  got=$(query 'sa_requests_total{outcome="ok"}')
  up=$(query 'up{job="sa"}')
  [[ $got == "$N" && $up == 1 ]] && break
  sleep 0.2
done
[[ $up == 1 ]] || fail "Prometheus does not see the target up: $(tail -n 5 "$T/prometheus.log")"
[[ $got == "$N" ]] || fail "Prometheus reports sa_requests_total{outcome=\"ok\"} = '${got}', want $N"
pass "Prometheus scraped /metrics: sa_requests_total{outcome=\"ok\"} = $got, up = $up"
waiting=$(query 'sa_requests_waiting')
[[ $waiting == 0 ]] || fail "sa_requests_waiting = '$waiting' with nothing running"
pass "Prometheus: sa_requests_waiting = $waiting"
