#!/usr/bin/env bash
# Two processes × 4 simulated CPU devices on one machine: the multi-host code path (per-process data shards,
# jax.make_array_from_process_local_data, per-process iterator checkpoints) without a cluster.
#
#   launch/cpu_multiprocess.sh WORKDIR [llada-jax train flags...]
set -euo pipefail
workdir=$1
shift
port=${PORT:-12355}
pids=()
for id in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
    llada-jax train --coordinator-address "127.0.0.1:$port" --num-processes 2 --process-id "$id" \
    --workdir "$workdir" --no-progress "$@" > "$workdir.process$id.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 20 "$workdir.process0.log"
exit $status
