#!/usr/bin/env bash
# CPU frequency and memory settings for a signalgate host (not persistent: run at boot, e.g. from
# a oneshot unit, or set the equivalents in firmware and on the kernel command line).
#
#   tuning/host-tuning.sh show    # what is set now
#   tuning/host-tuning.sh apply   # set it
#
# - Governor `performance`: the hot core stays at full clock; a core that ramps up from a low
#   frequency on each burst of signals adds tens of microseconds to the first orders.
# - Transparent huge pages `madvise`: with `always`, khugepaged compaction and page-fault time
#   collapsing can stall the hot core for milliseconds; `madvise` keeps huge pages for programs that
#   ask for them. Defrag `defer+madvise` for the same reason.
set -euo pipefail
thp=/sys/kernel/mm/transparent_hugepage
case "${1:-show}" in
    show)
        for g in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
            [ -e "$g" ] && echo "$(basename "$(dirname "$(dirname "$g")")"): $(cat "$g")"
        done
        [ -e "$thp/enabled" ] && echo "thp enabled: $(cat "$thp/enabled")" && echo "thp defrag: $(cat "$thp/defrag")"
        ;;
    apply)
        [ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
        for g in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
            [ -e "$g" ] && echo performance > "$g"
        done
        if [ -e "$thp/enabled" ]; then
            echo madvise > "$thp/enabled"
            echo defer+madvise > "$thp/defrag"
        fi
        "$0" show
        ;;
    *) echo "usage: host-tuning.sh show|apply" >&2; exit 2 ;;
esac
