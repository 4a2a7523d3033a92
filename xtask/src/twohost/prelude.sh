# Two-host scenarios: the functions each VM's script calls (POSIX sh). Set before this:
# sync (a directory of the project both VMs write), scratch (a directory of this host), me and
# peer (host numbers 1 and 2), grace (seconds a server may take to end after its client), boot
# (seconds to wait for the other host to come up).
#
# Each scenario is a barrier: the server side runs `serve`, the other host `connect`, and
# neither goes on to the next scenario before both are done, so a scenario never meets the
# previous one's programs. Every program runs under `timeout`. Results are printed as
#   @@ KEY ROLE | an output line (cut to 160 characters; stdout, then stderr)
#   @@ KEY ROLE exit STATUS tries N secs N
peer_gone=

mark() { : > "$sync/$1"; }

# await NAME SECONDS: waits for the peer's mark NAME. Gives up after SECONDS, and from then on
# at once: the peer is taken to be gone.
await() {
    [ -z "$peer_gone" ] || return 1
    n=0
    while [ ! -e "$sync/$1" ]; do
        if [ "$n" -ge $(($2 * 5)) ]; then
            peer_gone=1
            echo "@@ sync: host $peer set no $1 within $2 s: taking it as gone"
            return 1
        fi
        sleep 0.2
        n=$((n + 1))
    done
}

# report KEY ROLE FILE STATUS TRIES START: FILE holds stdout, FILE.err stderr (kept apart: a
# stderr line written between two flushes of buffered stdout would split a line).
report() {
    {
        cut -c1-160 "$3"
        cut -c1-160 "$3.err"
    } | sed "s/^/@@ $1 $2 | /"
    echo "@@ $1 $2 exit $4 tries $5 secs $(($(date +%s) - $6))"
}

# serve KEY SECONDS ARGV...: runs the server until the client is done (then it should end by
# itself: it gets $grace seconds before it is killed).
serve() {
    key=$1 limit=$2 out="$scratch/$1.out"
    shift 2
    start=$(date +%s)
    if [ -n "$peer_gone" ]; then
        echo "host $peer is gone: not started" > "$out"
        : > "$out.err"
        report "$key" server "$out" 125 0 "$start"
        return
    fi
    timeout -k 5 "$limit" "$@" > "$out" 2> "$out.err" &
    pid=$!
    await "$key.client" $((2 * limit + 15))
    (
        sleep "$grace"
        echo "xtask: still running $grace s after the client ended: killed" >> "$out.err"
        kill "$pid"
    ) &
    dog=$!
    wait "$pid"
    status=$?
    kill "$dog" 2> /dev/null
    report "$key" server "$out" "$status" 1 "$start"
    mark "$key.server"
}

# connect KEY SECONDS ARGV...: runs the client, again after a second while it fails fast (the
# server may not listen yet), for up to SECONDS.
connect() {
    key=$1 limit=$2 out="$scratch/$1.out"
    shift 2
    start=$(date +%s)
    tries=0
    if [ -n "$peer_gone" ]; then
        echo "host $peer is gone: not started" > "$out"
        : > "$out.err"
        report "$key" client "$out" 125 0 "$start"
        return
    fi
    while :; do
        tries=$((tries + 1))
        timeout -k 5 "$limit" "$@" > "$out" 2> "$out.err"
        status=$?
        if [ "$status" -eq 0 ] || [ "$status" -eq 124 ] ||
            [ $(($(date +%s) - start)) -ge "$limit" ]; then
            break
        fi
        sleep 1
    done
    report "$key" client "$out" "$status" "$tries" "$start"
    mark "$key.client"
    await "$key.server" $((grace + 20))
}

mark "up.$me"
await "up.$peer" "$boot"
