#!/usr/bin/env bash
# One flow of send_lat with the client's and the server's modes crossed (busy-poll, async),
# ROUNDS rounds in one boot, the order turning every round. Prints one line per run: client
# mode, server mode, t_typical, 99%, CPU per operation (us). In the soft-RoCE VM:
#   cargo xtask vm -- bash benches/scripts/cross-modes.sh [ROUNDS]
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${RDMA_BENCH:-$root/target/release/rdma-bench}
ip=${TOKIO_RDMA_LOCAL_IP:-192.0.2.1}
rounds=${1:-10}
"$bin" server --bind "$ip:18661" --sessions 1000 --mode busy-poll 2>/dev/null &
busy=$!
"$bin" server --bind "$ip:18662" --sessions 1000 --mode async 2>/dev/null &
async=$!
sleep 3
run() {
    printf "%-9s %-6s " "$1" "$2"
    "$bin" client --connect "$ip:$3" --mode "$1" --test send_lat --size 2 --iters 2000 \
        --warmup 200 2>&1 | awk '/^ 2 /{print $5, $8, $11}'
}
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 0 ]; then
        run busy-poll busy 18661; run async busy 18661
        run busy-poll async 18662; run async async 18662
    else
        run async async 18662; run busy-poll async 18662
        run async busy 18661; run busy-poll busy 18661
    fi
done
kill "$busy" "$async"
