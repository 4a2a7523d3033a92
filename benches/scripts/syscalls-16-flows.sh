#!/usr/bin/env bash
# System calls (and CPU time, in ms) per operation of the client and of the server, 16 flows
# sharing state, callback against async (the server mirrors the client's mode), counted by
# perf stat. In the soft-RoCE VM:
#   cargo xtask vm -- bash benches/scripts/syscalls-16-flows.sh
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${RDMA_BENCH:-$root/target/release/rdma-bench}
ip=${TOKIO_RDMA_LOCAL_IP:-192.0.2.1}
ev=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait
n=1000
ops=$((n * 16))
per_op() { awk -F, -v n=$ops '/,/{printf "%s=%.2f ", $3, $1/n} END{print ""}' "$@"; }
tmp=$(mktemp -d)
for m in callback async; do
    for r in 1 2; do
        perf stat -x, -o "$tmp/server" -e $ev "$bin" server --bind "$ip:18730" --sessions 1 \
            2>/dev/null &
        srv=$!
        sleep 2
        printf "%-9s client " $m
        if ! perf stat -x, -o "$tmp/client" -e $ev "$bin" client --connect "$ip:18730" \
            --mode $m --test send_lat --size 2 --iters $n --warmup 100 --flows 16 \
            --shared-state >"$tmp/out" 2>&1; then
            echo "client failed:"; cat "$tmp/out"; kill $srv; wait $srv; continue
        fi
        per_op "$tmp/client"
        wait $srv
        printf "%-9s server " $m
        per_op "$tmp/server"
    done
done
rm -rf "$tmp"
