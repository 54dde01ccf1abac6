#!/usr/bin/env bash
# The PUBLISH rate Redis itself reaches on this machine: the second competitor figure of
# `benches/global.rs` ("evbus reaches at least the rate of `redis-benchmark -P 64` with one
# subscriber connected").
#
# Starts its own redis-server on a free loopback port (no persistence), connects one
# subscriber with redis-cli, runs redis-benchmark with 64 pipelined PUBLISHes per round trip,
# prints the rate, and stops both processes on exit.
#
# PUBLISH is not among redis-benchmark's built-in tests (-t), so it is given as a command.
#
#   benches/redis_benchmark.sh [requests]     # default 1000000
#
# Environment: CLIENTS (redis-benchmark -c, default 50, its own default), PIPELINE (default 64),
# PAYLOAD (default "hello").
set -euo pipefail

requests="${1:-1000000}"
clients="${CLIENTS:-50}"
pipeline="${PIPELINE:-64}"
payload="${PAYLOAD:-hello}"
channel="bench_channel"

for tool in redis-server redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "$tool not found (install redis-server / redis-tools)" >&2; exit 1; }
done

# A free loopback port: ask the kernel for one (bind to port 0), never 6379.
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    else
        local p
        while :; do
            p=$((20000 + RANDOM % 30000))
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
        done
    fi
}

server_pid=""
subscriber_pid=""
cleanup() {
    [ -n "$subscriber_pid" ] && kill "$subscriber_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    [ -n "$subscriber_pid" ] && wait "$subscriber_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && wait "$server_pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port="$(free_port)"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --loglevel warning --logfile "" >/dev/null &
server_pid=$!

for _ in $(seq 100); do
    [ "$(redis-cli -p "$port" PING 2>/dev/null)" = "PONG" ] && break
    sleep 0.05
done
[ "$(redis-cli -p "$port" PING 2>/dev/null)" = "PONG" ] || { echo "redis-server on port $port did not start" >&2; exit 1; }

redis-cli -p "$port" SUBSCRIBE "$channel" >/dev/null &
subscriber_pid=$!
for _ in $(seq 100); do
    [ "$(redis-cli -p "$port" PUBSUB NUMSUB "$channel" | tail -n 1)" = "1" ] && break
    sleep 0.05
done
[ "$(redis-cli -p "$port" PUBSUB NUMSUB "$channel" | tail -n 1)" = "1" ] || { echo "the subscriber did not connect" >&2; exit 1; }

echo "redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), port $port, 1 subscriber on $channel," \
    "$requests PUBLISHes, -c $clients -P $pipeline, payload ${#payload} bytes"
# -q prints e.g. "PUBLISH bench_channel hello: 812345.67 requests per second, p50=..."; redis-benchmark
# rewrites its progress line with \r, so keep only the final line.
result="$(redis-benchmark -p "$port" -c "$clients" -P "$pipeline" -n "$requests" -q \
    PUBLISH "$channel" "$payload" | tr '\r' '\n' | grep 'requests per second' | tail -n 1)"
echo "$result"
rate="$(echo "$result" | sed -n 's/.*: *\([0-9.]*\) requests per second.*/\1/p')"
echo "publish_rate_per_second=$rate"
