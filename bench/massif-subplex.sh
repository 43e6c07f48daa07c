#!/bin/bash
# Runs the release subplex under valgrind's massif, for `subplex-bench --subplex-bin`
# (docs/benchmarks.md, "Where an idle subscriber's memory goes"). supervise kills this
# script with SIGKILL, which valgrind would not survive to write its profile, so a watcher
# sends the gateway SIGTERM once the script is gone: it drains and massif writes
# massif.<time>.out into MASSIF_DIR (default: the current directory).
root=$(cd "$(dirname "$0")/.." && pwd)
out="${MASSIF_DIR:-.}/massif.$(date +%s).out"
valgrind --tool=massif --depth=40 --threshold=0.2 --massif-out-file="$out" \
    "$root/target/release/subplex" "$@" &
child=$!
me=$$
( while kill -0 "$me" 2>/dev/null; do sleep 0.2; done; kill -TERM "$child" ) </dev/null >/dev/null 2>&1 &
wait "$child"
