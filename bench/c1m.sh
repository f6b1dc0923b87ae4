#!/usr/bin/env bash
# The c1m run of BENCHMARKS.md: as many concurrent connections as this machine
# holds, server and load generator on the same box, each connection receiving
# one 512-byte message per minute (the load of the 12-million-connection Java
# benchmark: ~16.7k messages/s at 1M). Runs in the background for ~10 minutes:
#   nohup bench/c1m.sh > c1m.log 2>&1 &
# Environment: N (connections, default 1000000), WORKERS (server workers,
# default enough to stay under RLIMIT_NOFILE), DURATION (seconds of load
# after the ramp, default 120), CONNECT_RATE (connects/s, default 6000).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
nofile=$(ulimit -n)
WORKERS=${WORKERS:-$(( (N + nofile - 1000 - 1) / (nofile - 1000) + 2 ))}
DURATION=${DURATION:-120}
CONNECT_RATE=${CONNECT_RATE:-6000}
RATE=$(( N / 60 ))  # one message per connection per minute
out=bench/results
mkdir -p "$out"

echo "c1m: $N connections, $WORKERS server workers, $RATE msg/s of 512 B for ${DURATION}s"
roost doctor --connections "$N" --workers "$WORKERS" --local-loadgen --no-measure || true

roost bench relay --spawn-server --target roost --workers "$WORKERS" \
    --server-arg=--max-connections --server-arg="$N" \
    --connections "$N" --connect-rate "$CONNECT_RATE" \
    --processes "$(( (N + nofile - 1000 - 1) / (nofile - 1000) ))" \
    --rate "$RATE" --message-bytes 512 --window 4 \
    --duration "$DURATION" --drain 30 \
    --json "$out/c1m.json" --plot "$out/c1m.png" --quiet
