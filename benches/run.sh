#!/usr/bin/env bash
# Runs every benchmark and writes BENCHMARKS.md. Not part of the test command: run it on purpose,
# on an otherwise idle machine:   benches/run.sh [SECONDS_PER_POINT]
#
# Gateways run pinned to CPU 1 (taskset) so their figures are per core; the load generator and the
# Bedrock stub share CPU 0. Every gateway calls the same stub with the same request mix, from the
# same client, in one run, alternating tokenfence and LiteLLM.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
seconds="${1:-10}"
out="${BENCH_OUT:-$repo/target/bench}"
rm -rf "$out" && mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$repo/target}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

echo "== building (release)" >&2
cargo build --release --locked -p invoke -p bedrock-stub -p bench -p synth >&2
bin="$target/release"
venv="$(bash tests/tools/ensure-venv.sh)"

echo "== LiteLLM venv" >&2
lvenv="${LITELLM_VENV:-$repo/.venv-litellm}"
if ! cmp -s benches/requirements-litellm.txt "$lvenv/.requirements" 2>/dev/null; then
  rm -rf "$lvenv" && python3 -m venv "$lvenv"
  "$lvenv/bin/pip" install --quiet --disable-pip-version-check -r benches/requirements-litellm.txt >&2
  cp benches/requirements-litellm.txt "$lvenv/.requirements"
fi

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1

start_stub() { # latency_ms -> sets stub_url
  local port; port=$(free_port)
  taskset -c 0 "$bin/bedrock-stub" "127.0.0.1:$port" --latency-ms "$1" >/dev/null 2>&1 &
  stub_pid=$!; pids+=($stub_pid); wait_port "$port"; stub_url="http://127.0.0.1:$port"
}

load() { # name url format concurrency [headers...]
  local name="$1" url="$2" format="$3" conc="$4"; shift 4
  local hdrs=(); for h in "$@"; do hdrs+=(--header "$h"); done
  echo "   $name c=$conc" >&2
  taskset -c 0 "$bin/bench" load --url "$url" --concurrency "$conc" --seconds "$seconds" --format "$format" "${hdrs[@]}" \
    | python3 -c "import json,sys; d=json.load(sys.stdin); d['name']='$name'; print(json.dumps(d))" >> "$out/load.jsonl"
}

echo "== moto (for the DynamoDB ledger)" >&2
moto_port=$(free_port)
taskset -c 0 "$venv/bin/python" tests/tools/moto_launcher.py 127.0.0.1 "$moto_port" --serial >/dev/null 2>&1 &
pids+=($!); wait_port "$moto_port"
AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" "$venv/bin/aws" dynamodb create-table --table-name bench-ledger \
  --billing-mode PAY_PER_REQUEST --attribute-definitions AttributeName=pk,AttributeType=S AttributeName=sk,AttributeType=S \
  --key-schema AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE >/dev/null

for latency in 0 50; do
  echo "== stub latency ${latency} ms" >&2
  start_stub "$latency"
  # tokenfence, in-memory ledger
  tf_port=$(free_port)
  AWS_ENDPOINT_URL_BEDROCK_RUNTIME="$stub_url" taskset -c 1 "$bin/invoke" serve --spec benches/bench.yaml \
    --listen "127.0.0.1:$tf_port" --ledger memory --api-key bench-key=bench >/dev/null 2>&1 &
  tf_pid=$!; pids+=($tf_pid); wait_port "$tf_port"
  # The do-nothing peers: a byte relay and serve's HTTP stack without the budget (bench relay).
  rt_port=$(free_port)
  taskset -c 1 "$bin/bench" relay --listen "127.0.0.1:$rt_port" --upstream "${stub_url#http://}" --mode tcp &
  rt_pid=$!; pids+=($rt_pid); wait_port "$rt_port"
  rh_port=$(free_port)
  taskset -c 1 "$bin/bench" relay --listen "127.0.0.1:$rh_port" --upstream "${stub_url#http://}" --mode http &
  rh_pid=$!; pids+=($rh_pid); wait_port "$rh_port"
  # tokenfence, DynamoDB ledger on moto
  td_port=$(free_port)
  AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_ENDPOINT_URL_BEDROCK_RUNTIME="$stub_url" taskset -c 1 "$bin/invoke" serve \
    --spec benches/bench.yaml --listen "127.0.0.1:$td_port" --ledger dynamodb:bench-ledger --api-key bench-key=bench >/dev/null 2>&1 &
  td_pid=$!; pids+=($td_pid); wait_port "$td_port"
  # LiteLLM
  ll_port=$(free_port)
  sed "s#STUB_URL#$stub_url#" benches/litellm.yaml > "$out/litellm.yaml"
  LITELLM_LOCAL_MODEL_COST_MAP=True taskset -c 1 "$lvenv/bin/litellm" --config "$out/litellm.yaml" --host 127.0.0.1 \
    --port "$ll_port" >"$out/litellm-$latency.log" 2>&1 &
  ll_pid=$!; pids+=($ll_pid); wait_port "$ll_port"
  for round in 1 2; do
    for conc in 1 16; do
      load "floor/$latency/$round" "$stub_url/model/amazon.nova-micro-v1:0/converse" converse "$conc"
      load "tokenfence-memory/$latency/$round" "http://127.0.0.1:$tf_port/model/nova-micro/converse" converse "$conc" "x-api-key: bench-key"
      load "relay-tcp/$latency/$round" "http://127.0.0.1:$rt_port/model/amazon.nova-micro-v1:0/converse" converse "$conc"
      load "relay-http/$latency/$round" "http://127.0.0.1:$rh_port/model/amazon.nova-micro-v1:0/converse" converse "$conc"
      load "litellm/$latency/$round" "http://127.0.0.1:$ll_port/v1/chat/completions" openai "$conc" "authorization: Bearer sk-bench"
      load "tokenfence-dynamodb/$latency/$round" "http://127.0.0.1:$td_port/model/nova-micro/converse" converse "$conc" "x-api-key: bench-key"
    done
    # Streams: time to first byte at c=1, the same stream mix through each gateway.
    load "stream-floor/$latency/$round" "$stub_url/model/amazon.nova-micro-v1:0/converse-stream" converse-stream 1
    load "stream-relay-tcp/$latency/$round" "http://127.0.0.1:$rt_port/model/amazon.nova-micro-v1:0/converse-stream" converse-stream 1
    load "stream-tokenfence-memory/$latency/$round" "http://127.0.0.1:$tf_port/model/nova-micro/converse-stream" converse-stream 1 "x-api-key: bench-key"
    load "stream-litellm/$latency/$round" "http://127.0.0.1:$ll_port/v1/chat/completions" openai-stream 1 "authorization: Bearer sk-bench"
  done
  if [ "$latency" = 0 ]; then
    # Added latency at c=1 with every process on CPU 0: pinned apart, each hop at c=1 also pays
    # the VM's cross-CPU wakeup of an idle core, which no proxy can avoid and which is not the
    # gateway's own cost.
    s_tf=$(free_port); s_rh=$(free_port); s_rt=$(free_port)
    AWS_ENDPOINT_URL_BEDROCK_RUNTIME="$stub_url" taskset -c 0 "$bin/invoke" serve --spec benches/bench.yaml \
      --listen "127.0.0.1:$s_tf" --ledger memory --api-key bench-key=bench >/dev/null 2>&1 &
    s_tf_pid=$!; pids+=($s_tf_pid)
    taskset -c 0 "$bin/bench" relay --listen "127.0.0.1:$s_rh" --upstream "${stub_url#http://}" --mode http &
    s_rh_pid=$!; pids+=($s_rh_pid)
    taskset -c 0 "$bin/bench" relay --listen "127.0.0.1:$s_rt" --upstream "${stub_url#http://}" --mode tcp &
    s_rt_pid=$!; pids+=($s_rt_pid)
    wait_port "$s_tf"; wait_port "$s_rh"; wait_port "$s_rt"
    for round in 1 2; do
      load "onecpu-floor/0/$round" "$stub_url/model/amazon.nova-micro-v1:0/converse" converse 1
      load "onecpu-relay-tcp/0/$round" "http://127.0.0.1:$s_rt/model/amazon.nova-micro-v1:0/converse" converse 1
      load "onecpu-relay-http/0/$round" "http://127.0.0.1:$s_rh/model/amazon.nova-micro-v1:0/converse" converse 1
      load "onecpu-tokenfence-memory/0/$round" "http://127.0.0.1:$s_tf/model/nova-micro/converse" converse 1 "x-api-key: bench-key"
    done
    # What the kernel's timer tick costs the request it lands in (benches/ticks.py): scheduler
    # switches and timer interrupts on CPU 0 traced for a second of tokenfence's c=1 load. Needs
    # perf with tracepoint access; without it the report says it was not measured. The load
    # outlasts the trace and its analysis, so every process is still there to be named.
    if command -v perf >/dev/null; then
      taskset -c 0 "$bin/bench" load --url "http://127.0.0.1:$s_tf/model/nova-micro/converse" --concurrency 1 \
        --seconds 8 --format converse --header "x-api-key: bench-key" >/dev/null &
      lp=$!; sleep 1
      if taskset -c 1 perf record -q -e sched:sched_switch -e irq_vectors:local_timer_entry -C 0 \
          -o "$out/ticks.data" -- sleep 1 >/dev/null 2>&1; then
        perf script -i "$out/ticks.data" -F tid,time,event,trace 2>/dev/null > "$out/ticks.txt"
        python3 benches/ticks.py "$out/ticks.txt" "tokenfence=$s_tf_pid" "stub=$stub_pid" "client=$lp" \
          > "$out/ticks.json"
      fi
      wait "$lp"
    fi
    kill "$s_tf_pid" "$s_rh_pid" "$s_rt_pid" 2>/dev/null || true
  fi
  # Peak RSS of each gateway over the whole run at this latency.
  for p in tf:$tf_pid ll:$ll_pid; do
    echo "{\"name\": \"rss-${p%%:*}/$latency\", \"kib\": $(awk '/VmHWM/ {print $2}' /proc/${p##*:}/status)}" >> "$out/rss.jsonl"
  done
  kill "$tf_pid" "$td_pid" "$ll_pid" "$rt_pid" "$rh_pid" 2>/dev/null || true
done

echo "== decision (in-process)" >&2
"$bin/bench" decision --iterations 2000000 > "$out/decision.json"

echo "== Lambda bootstraps" >&2
PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$target/nested" cargo lambda build --release \
  --target x86_64-unknown-linux-gnu.2.17 -p provider -p invoke --lambda-dir "$target/nested/lambda" >&2
python3 benches/lambda_init.py "$target/nested/lambda" > "$out/lambda.json"

echo "== synth at scale" >&2
python3 benches/synth_scale.py "$bin/synth" "$out" > "$out/synth.json"

python3 benches/report.py "$out" "$seconds" > BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2
