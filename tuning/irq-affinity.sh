#!/usr/bin/env bash
# Moves hardware interrupts off the node's cores, onto the housekeeping cores.
#
#   tuning/irq-affinity.sh 2-7        # interrupts may use cores 2..7 only
#   tuning/irq-affinity.sh --show     # where each interrupt may run now
#
# Why: an interrupt landing on the hot core preempts the signal path for microseconds. The kernel
# command line (irqaffinity=, see `signalgate tune check`) sets the default at boot; this script
# applies it to a running host, including interrupts that were already placed. Stop irqbalance
# first (`systemctl disable --now irqbalance`): it would move them back. Some interrupts (per-CPU
# timers, managed queues of multi-queue devices) cannot be moved; they are listed, not changed.
set -euo pipefail

if [ "${1:-}" = "--show" ]; then
    for d in /proc/irq/[0-9]*; do
        printf '%-6s %-12s %s\n' "$(basename "$d")" "$(cat "$d/smp_affinity_list" 2>/dev/null)" "$(ls "$d" | grep -v -E 'smp_affinity|affinity_hint|node|spurious|effective' | head -1)"
    done
    exit 0
fi
cpus=${1:?usage: irq-affinity.sh CPU-LIST (e.g. 2-7) | --show}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

# default_smp_affinity (for interrupts registered later) takes a hex mask, not a list.
mask=0
IFS=, read -ra parts <<< "$cpus"
for p in "${parts[@]}"; do
    for ((c = ${p%-*}; c <= ${p#*-}; c++)); do mask=$((mask | (1 << c))); done
done
printf '%x\n' "$mask" > /proc/irq/default_smp_affinity
moved=0; kept=0
for d in /proc/irq/[0-9]*; do
    if echo "$cpus" > "$d/smp_affinity_list" 2>/dev/null; then
        moved=$((moved + 1))
    else
        kept=$((kept + 1))
        echo "irq $(basename "$d"): cannot be moved (stays on $(cat "$d/smp_affinity_list" 2>/dev/null))" >&2
    fi
done
echo "interrupts moved to cores $cpus: $moved; left in place: $kept"
