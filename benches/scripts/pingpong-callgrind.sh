#!/usr/bin/env bash
# Instructions per message of the pingpong client, counted by callgrind (repeatable, unlike
# time on a shared, emulated machine). Runs on an RDMA device: inside the soft-RoCE VM use
#   cargo xtask vm -- bash benches/scripts/pingpong-callgrind.sh PINGPONG_BINARY [ARGS...]
# It runs the client twice (N1 and N2 iterations, 2-byte messages) against a server and
# reports (Ir(N2) - Ir(N1)) / (N2 - N1): the per-message cost without the setup.
set -euo pipefail
bin=${1:?pingpong binary}
shift
n1=${CALLGRIND_N1:-200}
n2=${CALLGRIND_N2:-1200}
ip=${TOKIO_RDMA_LOCAL_IP:-192.0.2.1}
out=$(mktemp -d)
ir() {
    local n=$1 port=$2
    "$bin" -s 2 -n "$n" -p "$port" "${@:3}" >/dev/null 2>&1 &
    local srv=$!
    sleep 0.5
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$n" \
        "$bin" -s 2 -n "$n" -p "$port" "${@:3}" "$ip" >"$out/client.$n" 2>&1 || true
    wait "$srv" || true
    callgrind_annotate "$out/cg.$n" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
a=$(ir "$n1" 18600 "$@")
b=$(ir "$n2" 18601 "$@")
echo "callgrind: $bin $*: Ir($n1)=$a Ir($n2)=$b per-message=$(( (b - a) / (n2 - n1) ))"
