#!/usr/bin/env bash
# The cost the daemon's history sampler adds per sample (recording one
# report of a userspace backend's shape) next to the cost of the report it
# records (userspace ResourceStatsInto, reused), and the heap a row costs
# (measured: BenchmarkRowMemory).
#
#   scripts/bench-history.sh                  # benchtime 1s, count 3
#   BENCHTIME=2s COUNT=5 scripts/bench-history.sh
#
# Needs root for the userspace report (a netlab lab). Target: recording
# costs no more than reading the report (the sampler stays within the
# ResourceStats budget); exit status 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
benchtime=${BENCHTIME:-1s}
count=${COUNT:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
go test -run '^$' -bench 'BenchmarkRecord$' -benchtime "$benchtime" -count "$count" ./history/ | tee -a "$out" >&2
go test -run '^$' -bench 'BenchmarkResourceStats$/reused' -benchtime "$benchtime" -count "$count" ./userspacebackend/ | tee -a "$out" >&2
# Memory: measured on the heap (HeapAlloc after GC, before and after
# filling 4096 rows for the retention), one fill per run.
go test -run '^$' -bench 'BenchmarkRowMemory$' -benchtime 1x -count "$count" ./history/ | tee -a "$out" >&2

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { # field <bench regexp> <unit>
	grep -E "^$1" "$out" | awk -v u="$2" '{for (i=2;i<=NF;i++) if ($i==u) print $(i-1)}' | median
}
rec_ns=$(field 'BenchmarkRecord-' 'ns/op')
rec_rows=$(field 'BenchmarkRecord-' 'rows')
rec_row=$(field 'BenchmarkRecord-' 'ns/row')
rs_us=$(field 'BenchmarkResourceStats/reused-' 'µs/report')
rs_rows=$(field 'BenchmarkResourceStats/reused-' 'rows')
mem_row=$(field 'BenchmarkRowMemory-' 'B/row')
mem_ring=$(field 'BenchmarkRowMemory-' 'ring-B/row')
mem_max=$(field 'BenchmarkRowMemory-' 'MiB@4096rows')
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n%-52s %14s\n' "metric (median of $count)" "measured"
printf '%-52s %14s\n' "------" "--------"
calc() { awk "BEGIN { print $1 }"; }
printf '%-52s %11.1f µs\n' "record one report ($rec_rows rows)" "$(calc "$rec_ns/1000")"
printf '%-52s %11.1f ns\n' "record, per row" "$rec_row"
printf '%-52s %11.1f µs\n' "userspace ResourceStatsInto ($rs_rows rows)" "$rs_us"
printf '%-52s %11.2f\n' "record / report read" "$(calc "$rec_ns/1000/$rs_us")"
printf '%-52s %11.0f B\n' "heap per row, measured (300 fine + 60 minutes)" "$mem_row"
printf '%-52s %11.0f B\n' "  of which the rings (Stats.MemoryBytes / rows)" "$mem_ring"
printf '%-52s %11.1f MiB\n' "heap at MaxRows (4096), measured" "$mem_max"
if [ "$(calc "($rec_ns/1000 <= $rs_us) ? 1 : 0")" != 1 ]; then
	echo "FAIL: recording costs more than reading the report" >&2
	exit 1
fi
