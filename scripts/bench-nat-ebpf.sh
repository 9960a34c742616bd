#!/usr/bin/env bash
# eBPF NAT speed (issue 16), side by side, in one run:
#   - an established source-NAT flow against a plain one on the same backend
#     and config, alternating (BenchmarkNATForwarding, target >= 0.9), with
#     the program's own run time per packet for each;
#   - new translated TCP connections against new plain ones
#     (BenchmarkNATNewConnections, target >= 0.7);
#   - ResourceStats without NAT and with a 64 512-port pool 90 % held by
#     real flows (BenchmarkResourceStatsNATPool; the eBPF ResourceStats
#     target is 1 ms).
# Needs root. Usage: scripts/bench-nat-ebpf.sh [COUNT=3]. Prints medians;
# exit status 1 if a target fails.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/eb.test" ./ebpfbackend/
log=$tmp/log
run() { # bench benchtime
	(cd ebpfbackend && "$tmp/eb.test" -test.run '^$' -test.bench "$1" -test.benchtime "$2") |
		grep '^Benchmark' | tee -a "$log" >&2
}
echo "head $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)'), $count rounds, load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$count"); do
	echo "round $r" >&2
	run '^BenchmarkNATForwarding$' 1x
	run '^BenchmarkNATNewConnections$' 1x
	run '^BenchmarkResourceStatsNATPool$' 300x
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

median() { # <bench regexp> <metric unit>
	awk -v re="$1" -v unit="$2" '
		$1 ~ re { for (i = 2; i <= NF; i++) if ($i == unit) v[n++] = $(i-1) }
		END {
			if (n == 0) { print "missing"; exit }
			for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
			print v[int((n - 1) / 2)]
		}' "$log"
}
fail=0
check() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == "ge" && v >= t) || (op == "le" && v <= t); print ok ? "PASS" : "FAIL" }'; }
row() {
	printf '%-64s %14s %8s  %s\n' "$1" "$2" "$3" "$4"
	[ "$4" != FAIL ] || fail=1
}
echo
row "metric (eBPF backend, XDP, median of $count)" "value" "target" "result"
v=$(median '^BenchmarkNATForwarding-' snat/plain)
row "established SNAT flow / plain flow (same run)" "$v" ">= 0.9" "$(check "$v" ge 0.9)"
row "  plain / SNAT (pps at the server)" "$(median '^BenchmarkNATForwarding-' plain-pps) / $(median '^BenchmarkNATForwarding-' snat-pps)" "" ""
row "  program run time per packet: plain / SNAT (ns)" "$(median '^BenchmarkNATForwarding-' plain-prog-ns/pkt) / $(median '^BenchmarkNATForwarding-' snat-prog-ns/pkt)" "" ""
v=$(median '^BenchmarkNATNewConnections-' snat/plain)
row "new translated TCP connections / new plain ones" "$v" ">= 0.7" "$(check "$v" ge 0.7)"
row "  plain / SNAT (completed handshakes per s)" "$(median '^BenchmarkNATNewConnections-' plain-conn/s) / $(median '^BenchmarkNATNewConnections-' snat-conn/s)" "" ""
v=$(median '^BenchmarkResourceStatsNATPool/no-nat-' µs/report)
row "ResourceStats, no NAT (us)" "$v" "<= 1000" "$(check "$v" le 1000)"
v=$(median '^BenchmarkResourceStatsNATPool/pool-64512-ports-90%-' µs/report)
row "ResourceStats, 64 512-port pool 90 % held by real flows (us)" "$v" "<= 1000" "$(check "$v" le 1000)"
exit $fail
