#!/usr/bin/env bash
# Two processes × 4 simulated CPU devices on one machine: the multi-host code path (per-process data shards,
# jax.make_array_from_process_local_data, per-process iterator checkpoints) without a cluster.
#
#   launch/cpu_multiprocess.sh [--dry-run] WORKDIR [llada-jax train flags...]
#
# Logs go to WORKDIR.process0.log and WORKDIR.process1.log; --dry-run prints the two commands instead.
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
if [ $# -lt 1 ]; then
  echo "usage: $0 [--dry-run] WORKDIR [llada-jax train flags...]" >&2
  exit 2
fi
workdir=$1
shift
port=${PORT:-12355}
pids=()
for id in 0 1; do
  command=(env XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu
           llada-jax train --coordinator-address "127.0.0.1:$port" --num-processes 2 --process-id "$id"
           --workdir "$workdir" --no-progress "$@")
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "${command[@]}"
    echo "> $(printf '%q' "$workdir.process$id.log") 2>&1 &"
    continue
  fi
  "${command[@]}" > "$workdir.process$id.log" 2>&1 &
  pids+=($!)
done
[ "$dry_run" = 1 ] && exit 0
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 20 "$workdir.process0.log"
exit $status
