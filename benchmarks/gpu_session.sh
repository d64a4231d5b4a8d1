#!/usr/bin/env bash
# Long GPU runs across the device tool's 10-minute calls: start a reproduction suite detached, then poll it.
#
# Run from the repository root on the GPU machine (torch and the other dependencies preinstalled, no
# network, the project not installed: it runs from src/). The CIFAR-10-LT bundle travels in the ignored
# folder .gpudata/ (see the benchmark notes in results/README.md for how it is made); `start` restores it
# once into $STATE/data. Everything lives under $STATE (default /tmp/longtail_gpu), which survives
# between calls only while the machine stays warm.
#
#   benchmarks/gpu_session.sh start SUITE PARALLEL [KEY=VALUE ...]   # returns at once
#   benchmarks/gpu_session.sh poll [SECONDS]                          # wait up to SECONDS, report, copy to $OUT
#   benchmarks/gpu_session.sh run COMMAND ...                         # any longtail command, detached, logged
#
# `poll` copies the suite folder to $OUT/suite without checkpoints or weights (what results/ keeps),
# plus the logs and `nvidia-smi`, and exits 0 when the suite has finished, 3 while it still runs.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${LONGTAIL_GPU_STATE:-/tmp/longtail_gpu}"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" LONGTAIL_DATA="$STATE/data"
mkdir -p "$STATE"

restore_data() {
    if [ -f "$STATE/data/.restored" ]; then return; fi
    if [ ! -f .gpudata/restore_cifar.py ]; then
        echo "gpu_session: .gpudata/restore_cifar.py is missing: carry .gpudata (see results/README.md)" >&2
        exit 2
    fi
    "$PY" .gpudata/restore_cifar.py cifar10 "$STATE/data" --src .gpudata/cifar10 --lt10-only
    touch "$STATE/data/.restored"
}

detach() {  # detach NAME COMMAND...: run in a new session, survive the end of this call
    local name="$1"; shift
    (setsid nohup "$@" >"$STATE/$name.log" 2>&1 & echo $! >"$STATE/$name.pid")
    echo "gpu_session: started $name (pid $(cat "$STATE/$name.pid")), log $STATE/$name.log"
}

running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

case "${1:-}" in
start)
    [ $# -ge 3 ] || { echo "usage: $0 start SUITE PARALLEL [KEY=VALUE ...]" >&2; exit 2; }
    suite="$2"; parallel="$3"; shift 3
    if running suite; then echo "gpu_session: a suite is already running" >&2; exit 2; fi
    restore_data
    # the rebuilt train files cannot match the official checksums (README of the data bundle)
    detach suite "$PY" -m longtail reproduce "$suite" --seeds 0 1 2 --parallel "$parallel" \
        --out "$STATE/suite" data.verify=false train.progress=false "$@"
    ;;
run)
    shift
    restore_data
    detach "cmd_$(date +%s)" "$PY" -m longtail "$@"
    ;;
poll)
    wait_s="${2:-0}"
    end=$(( $(date +%s) + wait_s ))
    while running suite && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
    [ -f "$STATE/suite.log" ] && tail -n 30 "$STATE/suite.log"
    nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv 2>/dev/null || true
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp "$STATE"/*.log "$OUT"/ 2>/dev/null || true
        if [ -d "$STATE/suite" ]; then
            tar -C "$STATE" --exclude=checkpoints --exclude='*.safetensors' --exclude='*.pt' -cf - suite \
                | tar -C "$OUT" -xf -
        fi
    fi
    if running suite; then echo "gpu_session: still running"; exit 3; fi
    echo "gpu_session: not running"
    ;;
*)
    echo "usage: $0 start SUITE PARALLEL [KEY=VALUE ...] | poll [SECONDS] | run COMMAND ..." >&2
    exit 2
    ;;
esac
