#!/usr/bin/env bash
# Re-measures every figure of BENCHMARKS.md, roost and its peers in one run,
# on this machine; JSON results land in bench/results/. Takes ~10 minutes.
# Usage: bench/record.sh [idle|relay|idle100k|group|all]
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
what=${1:-all}

idle() {
    for target in roost peer:websockets peer:picows; do
        name=${target#peer:}
        python bench/idle_bytes.py --target "$target" --connections 10000 \
            --json "$out/idle-10k-$name.json"
    done
}

relay() {
    for run in 1 2 3; do
        for target in peer:websockets peer:picows; do
            name=${target#peer:}
            roost bench relay --spawn-server --target "$target" --connections 1000 \
                --duration 10 --quiet --json "$out/relay-$name-$run.json"
        done
        for workers in 1 2; do
            roost bench relay --spawn-server --target roost --workers "$workers" \
                --connections 1000 --duration 10 --quiet --json "$out/relay-roost-w$workers-$run.json"
        done
    done
}

idle100k() {
    roost bench idle --spawn-server --target roost --workers 8 --connections 100000 --warmup 4000 \
        --hold 10 --quiet --json "$out/idle-100k-roost-w8.json"
    roost doctor --connections 100000 --workers 8 --local-loadgen --json \
        > "$out/doctor-100k-w8.json" || true
}

group() {
    python bench/group_fanout.py --members 10000 --online 5000 --workers 2 --messages 10 \
        --gap 0.5 --json "$out/group-fanout-10k.json"
}

case "$what" in
    idle) idle ;;
    relay) relay ;;
    idle100k) idle100k ;;
    group) group ;;
    all) idle; relay; idle100k; group ;;
esac
