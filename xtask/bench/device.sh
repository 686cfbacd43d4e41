#!/bin/bash
# Issue 20's many-core measurements in one run of a few minutes, for a lent machine where
# nothing is installed (the `device` tool), from the bundle `cargo xtask bench --device-bundle`
# makes (the release binary, a static pump, redis-server, redis-benchmark, taskset and every
# library they load, run through the bundle's own loader):
#   1. one recording across 1, 2, 4... cores into tmpfs (`scaling.sh`), with each run's
#      pipeline stage line (which stage stops it);
#   2. redis-server (CPU 0) under redis-benchmark (CPUs 1..N/2-1), unrecorded and recorded
#      by an agent on the upper half of the CPUs (`--cpus`, 256M ring), 512 B and 16 KiB
#      values, in alternating rounds: throughput ratio and bytes lost.
# Writes OUT/device.md (the section `cargo xtask bench --device-report OUT/device.md` puts in
# BENCHMARKS.md), OUT/scaling.txt, OUT/stages.txt, OUT/redis.txt and OUT/machine.txt.
#
# usage: device.sh BUNDLE OUT [quick]
# On the device: run(command="bash xtask/bench/device.sh target/device $OUT", carry=["target/device"]).
set -euo pipefail
bundle=$(cd "$1" && pwd)
out=$2
quick=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
scratch=${RETRACE_DEVICE_SCRATCH:-/dev/shm/retrace-device}
rm -rf "$scratch"
mkdir -p "$scratch/bin"
export XDG_CONFIG_HOME=$scratch/config XDG_DATA_HOME=$scratch/data XDG_STATE_HOME=$scratch/state

# Each program as it is where the machine's libraries serve it, else through the bundle's
# loader and libraries (the machine's own may be missing or older). exec keeps the PID,
# which the scripts read /proc for. RETRACE_DEVICE_LOADER=1: always through the loader.
for name in retrace redis-server redis-benchmark taskset; do
    if [ -z "${RETRACE_DEVICE_LOADER:-}" ] && "$bundle/bin/$name" --version >/dev/null 2>&1; then
        printf '#!/bin/sh\nexec %s "$@"\n' "$bundle/bin/$name" >"$scratch/bin/$name"
    else
        echo "device: $name runs through the bundle's loader" >&2
        printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s %s "$@"\n' \
            "$bundle/lib" "$bundle/lib/ld-linux-x86-64.so.2" "$bundle/bin/$name" >"$scratch/bin/$name"
    fi
    chmod +x "$scratch/bin/$name"
done
export PATH=$scratch/bin:$PATH
mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
sysctl -qw kernel.bpf_stats_enabled=0 2>/dev/null || true

mapfile -t cpus < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' | while IFS=- read -r a b; do seq "$a" "${b:-$a}"; done)
n=${#cpus[@]}
{
    echo "cpus: $n ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'))"
    echo "memory: $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "tmpfs: $(df -h "$scratch" | tail -1)"
    echo "retrace: $("$scratch/bin/retrace" --version) at $(cat "$bundle/commit" 2>/dev/null || echo '?')"
} | tee "$out/machine.txt"

if [ -n "$quick" ]; then total=1024 rounds=1; else total=4096 rounds=2; fi

# 1. One recording across cores: 1, 2, 4... CPUs for the agent, the writer on CPU 0.
counts=()
for ((c = 1; c < n - 1; c *= 2)); do counts+=("$c"); done
counts+=($((n > 1 ? n - 1 : 1)))
echo "device: scaling over ${counts[*]} agent cores, $total MiB per run" >&2
bash "$here/scaling.sh" "$scratch/bin/retrace" "$bundle/bin/pump" "$scratch/scaling" "$total" "$rounds" "${counts[@]}" \
    >"$out/scaling.txt" 2> >(tee "$out/stages.txt" >&2)
rm -rf "$scratch/scaling"

# 2. redis-server with the agent on cores of its own.
if ((n >= 4)); then
    half=$((n / 2))
    server_cpu=${cpus[0]}
    bench_cpus=$(IFS=,; echo "${cpus[*]:1:half-1}")
    agent_cpus=$(IFS=,; echo "${cpus[*]:half}")
    threads=$((half - 1 < 4 ? half - 1 : 4))
else
    server_cpu=${cpus[0]} bench_cpus=${cpus[0]} agent_cpus=${cpus[n - 1]} threads=1
fi
port=16390
: >"$out/redis.txt"
for size in 512 16384; do
    if [ -n "$quick" ]; then requests=50000; elif ((size > 4096)); then requests=100000; else requests=400000; fi
    taskset -c "$server_cpu" redis-server --port "$port" --save '' --appendonly no --dir "$scratch" >/dev/null &
    server=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'PING\r\n' >&3 && read -r -t 1 reply <&3 && [[ $reply == +PONG* ]]) 2>/dev/null && break
        sleep 0.1
    done
    for ((round = 0; round < rounds; round++)); do
        for recorded in 0 1; do
            echo "device: redis $size B round $round recorded=$recorded" >&2
            lost=0
            if ((recorded)); then
                rm -rf "$scratch/rec"
                retrace record -o "$scratch/rec" --cpus "$agent_cpus" --ring-buffer 256M --pid "$server" \
                    >/dev/null 2>"$scratch/record.log" &
                rec=$!
                until [ -e "$scratch/rec/manifest.json" ]; do sleep 0.05; done
                sleep 0.3
            fi
            csv=$(taskset -c "$bench_cpus" redis-benchmark -p "$port" -t set,get -c 20 -r 1000 --threads "$threads" \
                -d "$size" -n "$requests" --csv)
            if ((recorded)); then
                kill -INT "$rec"
                wait "$rec" || true
                lost=$(grep -o '[0-9]* bytes lost' "$scratch/record.log" | grep -o '^[0-9]*' || echo 0)
                rm -rf "$scratch/rec"
            fi
            # "test","rps",...: one line per test after the header.
            echo "$csv" | tail -n +2 | tr -d '"' |
                awk -F, -v s="$size" -v r="$round" -v rec="$recorded" -v lost="$lost" '{ print $1, s, r, rec, $2, lost }' |
                tee -a "$out/redis.txt"
        done
    done
    kill "$server"
    wait "$server" 2>/dev/null || true
done

# The section for BENCHMARKS.md: medians over the rounds.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
{
    echo
    echo
    echo "Measured on the lent many-core machine by \`xtask/bench/device.sh\` (bundle from"
    echo "\`cargo xtask bench --device-bundle\`), $rounds round(s), medians:"
    echo
    sed 's/^/    /' "$out/machine.txt"
    echo
    echo "One writer at full speed (1 MiB writes into tmpfs, \`--backpressure\`: zero loss), the agent on"
    echo "the last N CPUs, the writer on CPU 0; the recording into tmpfs."
    echo
    echo "| agent cores | zero-loss MB/s | agent CPU s/GB | lost bytes |"
    echo "|---|---|---|---|"
    for c in "${counts[@]}"; do
        mbps=$(awk -v c="$c" '$1 == c { print $3 }' "$out/scaling.txt" | median)
        sgb=$(awk -v c="$c" '$1 == c && $5 > 0 { print $4 / ($5 / 1e9) }' "$out/scaling.txt" | median)
        lost=$(awk -v c="$c" '$1 == c { s += $6 } END { printf "%.0f", s }' "$out/scaling.txt")
        printf '| %s | %.0f | %.2f | %s |\n' "$c" "$mbps" "$sgb" "$lost"
    done
    echo
    echo "redis-server on CPU $server_cpu, \`redis-benchmark -t set,get -c 20 -r 1000 --threads $threads\` on CPUs"
    echo "$bench_cpus, recorded by \`retrace record --cpus $agent_cpus --ring-buffer 256M --pid\`:"
    echo
    echo "| test | unrecorded req/s | recorded req/s | ratio | bytes lost (SET and GET of a run together, all rounds) |"
    echo "|---|---|---|---|---|"
    for size in 512 16384; do
        for test in SET GET; do
            plain=$(awk -v t="$test" -v s="$size" '$1 == t && $2 == s && $4 == 0 { print $5 }' "$out/redis.txt" | median)
            traced=$(awk -v t="$test" -v s="$size" '$1 == t && $2 == s && $4 == 1 { print $5 }' "$out/redis.txt" | median)
            lost=$(awk -v t="$test" -v s="$size" '$1 == t && $2 == s && $4 == 1 { l[$3] = $6 } END { for (r in l) x += l[r]; printf "%.0f", x }' "$out/redis.txt")
            awk -v t="$test" -v s="$size" -v p="$plain" -v q="$traced" -v l="$lost" \
                'BEGIN { printf "| redis %s %s B | %.0f | %.0f | %.3f | %s |\n", t, s, p, q, (p > 0 ? q / p : 0), l }'
        done
    done
    echo
    echo "Each scaling run's pipeline stages (CPU s / waited on the next stage s):"
    echo
    grep 'pipeline stages' "$out/stages.txt" | sed 's/^/    /' || true
} >"$out/device.md"
cat "$out/device.md"
rm -rf "$scratch"
