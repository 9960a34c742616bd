#!/usr/bin/env bash
# Runs the benchmarks of the userspace backend's pure-Go core (policy
# matcher, frame parser, session table, flow cache) and
# prints measured values next to their targets.
#
#   scripts/bench-userspace-core.sh            # benchtime 1s, count 1
#   BENCHTIME=3s COUNT=3 scripts/bench-userspace-core.sh   # median of 3
#
# The machine's load matters: the parallel session rows need idle cores.
# Exit status is 1 if any row fails its target.
set -euo pipefail
cd "$(dirname "$0")/.."

benchtime=${BENCHTIME:-1s}
count=${COUNT:-1}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

pkgs=(
	./internal/policy/
	./userspacebackend/internal/pkt/
	./userspacebackend/internal/session/
	./userspacebackend/internal/flowcache/
)
echo "go test -run '^\$' -bench . -benchtime $benchtime -count $count ${pkgs[*]}" >&2
echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
go test -run '^$' -bench . -benchtime "$benchtime" -count "$count" "${pkgs[@]}" | tee "$out" >&2

cpus=$(go env GOMAXPROCS 2>/dev/null || true)
[ -n "$cpus" ] || cpus=$(nproc)

# metric <label> <bench regexp> <unit> <op: ge|le|eq> <target> [divide-by]
# Takes the median over -count runs of the value printed before <unit>.
fail=0
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg) (2 vCPUs shared with other work make parallel rows unreliable)"
printf '\n%-58s %14s %12s  %s\n' "metric" "measured" "target" "result"
printf '%-58s %14s %12s  %s\n' "------" "--------" "------" "------"
metric() {
	local label=$1 re=$2 unit=$3 op=$4 target=$5 div=${6:-1}
	local v
	v=$(awk -v re="$re" -v unit="$unit" -v div="$div" '
		$1 ~ re { for (i = 2; i <= NF; i++) if ($i == unit) vals[n++] = $(i-1) / div }
		END {
			if (n == 0) { print "missing"; exit }
			# median
			for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (vals[j] < vals[i]) { t = vals[i]; vals[i] = vals[j]; vals[j] = t }
			printf "%.2f", vals[int((n - 1) / 2)]
		}' "$out")
	local res
	if [ "$v" = missing ]; then
		res=MISSING
	else
		res=$(awk -v v="$v" -v t="$target" -v op="$op" 'BEGIN {
			ok = (op == "ge" && v >= t) || (op == "le" && v <= t) || (op == "eq" && v == t)
			print ok ? "PASS" : "FAIL" }')
	fi
	[ "$res" = PASS ] || fail=1
	local sym=">="
	[ "$op" = le ] && sym="<="
	[ "$op" = eq ] && sym="=="
	printf '%-58s %14s %12s  %s\n' "$label ($unit)" "$v" "$sym $target" "$res"
}

metric "policy Decide v4, first rule"                 '^BenchmarkDecide/v4_first_rule-'            ns/op        le 100
metric "policy Decide v6, 5th rule"                   '^BenchmarkDecide/v6_rule4-'                 ns/op        le 100
metric "policy Decide allocations"                    '^BenchmarkDecide/'                          allocs/op    eq 0
metric "pkt Parse udp4"                               '^BenchmarkParse/udp4-'                      ns/packet    le 50
metric "pkt Parse tcp6"                               '^BenchmarkParse/tcp6-'                      ns/packet    le 50
metric "pkt Parse+SetMACs+DecTTL udp4"                '^BenchmarkParse/parse\+rewrite_udp4-'       ns/packet    le 50
metric "pkt allocations"                              '^BenchmarkParse/'                           allocs/op    eq 0
metric "session hit, 4 Ki sessions, 1 core"           '^BenchmarkLookupHit/sessions=4096-'         Mlookups/s   ge 10
metric "session hit, 64 Ki sessions, 1 core"          '^BenchmarkLookupHit/sessions=65536-'        Mlookups/s   ge 10
metric "session hit, 1 Mi sessions, 1 core"           '^BenchmarkLookupHit/sessions=1048576-'      Mlookups/s   ge 10
metric "session hit, 4 Ki, RunParallel, per core"     '^BenchmarkLookupHit/sessions=4096/parallel-' Mlookups/s  ge 10 "$cpus"
metric "session hit, 64 Ki, RunParallel, per core"    '^BenchmarkLookupHit/sessions=65536/parallel-' Mlookups/s ge 10 "$cpus"
metric "session hit, 1 Mi, RunParallel, per core"     '^BenchmarkLookupHit/sessions=1048576/parallel-' Mlookups/s ge 10 "$cpus"
metric "session hit, LookupBatch(64), 4 Ki, 1 core"      '^BenchmarkLookupBatch/sessions=4096-'      Mlookups/s   ge 10
metric "session hit, LookupBatch(64), 64 Ki, 1 core"     '^BenchmarkLookupBatch/sessions=65536-'     Mlookups/s   ge 10
metric "session hit, LookupBatch(64), 1 Mi, 1 core"      '^BenchmarkLookupBatch/sessions=1048576-'   Mlookups/s   ge 10
metric "session hit, LookupBatch(64), 64 Ki, parallel, per core" '^BenchmarkLookupBatch/sessions=65536/parallel-' Mlookups/s ge 10 "$cpus"
metric "session lookup allocations"                   '^BenchmarkLookup(Hit|Batch)/'               allocs/op    eq 0
metric "session insert+remove allocations"            '^BenchmarkInsertRemove-'                    allocs/op    eq 0
metric "session insert+remove rate"                   '^BenchmarkInsertRemove-'                    Minserts/s   ge 1
metric "session memory, full 1 Mi table"              '^BenchmarkMemory-'                          bytes/session le 96
metric "flowcache hit"                                '^BenchmarkLookup/hit-'                      ns/op        le 50
metric "flowcache miss"                               '^BenchmarkLookup/miss-'                     ns/op        le 50
metric "flowcache allocations"                        '^BenchmarkLookup/'                          allocs/op    eq 0
exit $fail
