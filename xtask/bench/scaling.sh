#!/bin/bash
# One recording across cores, for `cargo xtask bench` and for a machine with nothing installed
# (the `device` tool: `xtask/bench/device.sh` runs it from `cargo xtask bench --device-bundle`).
#
# usage: scaling.sh RETRACE PUMP DIR [TOTAL_MB [ROUNDS [CORES...]]]
# A writer (PUMP) moves TOTAL_MB MiB in 1 MiB writes into a file under DIR at full speed,
# recorded with `--backpressure` (zero loss) into DIR by an agent given the last N CPUs
# (`--cpus`), the writer on the first CPU when there are others. N: CORES, or 1, 2, 4... and
# all. Prints one line per run: "cores round mbps agent_cpu_seconds recorded_bytes lost_bytes";
# on stderr, each run's stage line (CPU and waiting per pipeline stage: which one is the limit).
set -euo pipefail
retrace=$1 pump=$2 dir=$3 total=${4:-4096} rounds=${5:-3}
shift $(( $# < 5 ? $# : 5 ))
mapfile -t cpus < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' | while IFS=- read -r a b; do seq "$a" "${b:-$a}"; done)
n=${#cpus[@]}
counts=("$@")
if [ ${#counts[@]} -eq 0 ]; then
    for ((c = 1; c < n; c *= 2)); do counts+=("$c"); done
    counts+=("$n")
fi
ticks=$(getconf CLK_TCK)
mkdir -p "$dir"
for ((round = 0; round < rounds; round++)); do
    for cores in "${counts[@]}"; do
        agent=$(IFS=,; echo "${cpus[*]: -$cores}")
        echo "scaling: one recording on $cores cores (CPUs $agent), round $round" >&2
        pin=()
        [ "$cores" -lt "$n" ] && pin=(taskset -c "${cpus[0]}")
        rm -rf "$dir/rec" "$dir/pump.out"
        coproc PUMP { exec "${pin[@]}" "$pump" file 1048576 "$total" 0 pattern; }
        read -r writer <&"${PUMP[0]}"
        RETRACE_PIPELINE_STATS=1 "$retrace" record -o "$dir/rec" --cpus "$agent" --ring-buffer 64M --backpressure --pid "$writer" \
            >/dev/null 2>"$dir/record.log" &
        rec=$!
        until [ -e "$dir/rec/manifest.json" ]; do sleep 0.05; done
        sleep 0.3
        # The agent's CPU from the writer's start on (loading the probes is not per GB).
        read -r -a before <"/proc/$rec/stat"
        echo g >&"${PUMP[1]}"
        read -r bytes secs <&"${PUMP[0]}"
        wait "$PUMP_PID" 2>/dev/null || true
        # The agent's CPU (its threads, live and ended) just before it is stopped.
        read -r -a stat <"/proc/$rec/stat"
        kill -INT "$rec"
        wait "$rec" || true
        grep 'pipeline stages' "$dir/record.log" | sed "s/^retrace: /scaling: $cores cores: /" >&2 || true
        recorded=$(grep -o '[0-9]* bytes recorded' "$dir/record.log" | grep -o '^[0-9]*' || echo 0)
        lost=$(grep -o '[0-9]* bytes lost' "$dir/record.log" | grep -o '^[0-9]*' || echo 0)
        awk -v c="$cores" -v r="$round" -v b="$bytes" -v s="$secs" -v t="$(( stat[13] + stat[14] - before[13] - before[14] ))" -v hz="$ticks" \
            -v rec="$recorded" -v lost="$lost" 'BEGIN { printf "%d %d %.1f %.2f %.0f %.0f\n", c, r, b / s / 1e6, t / hz, rec, lost }'
    done
done
rm -rf "$dir/rec"
