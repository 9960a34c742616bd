#!/usr/bin/env bash
# Userspace NAT speed (issue 16), side by side, in one run:
#   - plain (untranslated) forwarding before and after NAT: BenchmarkForwarding
#     of a base commit and of this tree, interleaved (userspace pps and its
#     ratio to the AF_XDP TX-only ceiling measured in the same run), and the
#     per-packet work without I/O (BenchmarkClassifyPlain, whose file is
#     copied into the base tree);
#   - per packet without I/O, a masqueraded flow's packets each way against
#     a plain flow's (BenchmarkClassifyNAT);
#   - an established source-NAT flow against a plain one on the same backend
#     (BenchmarkNATForwarding, target >= 0.9);
#   - new translated TCP connections against new plain ones
#     (BenchmarkNATNewConnections, target >= 0.7);
#   - ResourceStats without NAT and with a 64 512-port pool 90 % held
#     (BenchmarkResourceStatsNATPool; the ResourceStats target is 20 us).
# Needs root. Usage:
#   scripts/bench-nat.sh            # 3 interleaved rounds, base = merge-base with main
#   COUNT=5 BASE=<commit> scripts/bench-nat.sh
# Prints medians. Exit status 1 if a target fails.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-3}
base=${BASE:-$(git merge-base HEAD main)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "base $base, head $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)'), $count rounds" >&2
git archive "$base" | tar -x -C "$tmp"
cp userspacebackend/classify_bench_linux_test.go "$tmp/userspacebackend/"
mkdir -p "$tmp/bin"
(cd "$tmp" && go test -c -o "$tmp/bin/base.test" ./userspacebackend/)
go test -c -o "$tmp/bin/head.test" ./userspacebackend/
log=$tmp/log
run() { # binary bench benchtime
	(cd userspacebackend && "$tmp/bin/$1.test" -test.run '^$' -test.bench "$2" -test.benchtime "$3") |
		grep '^Benchmark' | sed "s/^/$1 /" | tee -a "$log" >&2
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$count"); do
	echo "round $r" >&2
	run base '^BenchmarkForwarding$' 1x
	run head '^BenchmarkForwarding$' 1x
	run head '^BenchmarkNATForwarding$' 1x
	run head '^BenchmarkNATNewConnections$' 1x
	run base '^BenchmarkClassifyPlain$' 2s
	run head '^BenchmarkClassifyPlain$' 2s
	run head '^BenchmarkClassifyNAT$' 2s
done
run head '^BenchmarkResourceStatsNATPool$' 20000x
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# median <binary> <bench regexp> <metric unit>
median() {
	awk -v bin="$1" -v re="$2" -v unit="$3" '
		$1 == bin && $2 ~ re { for (i = 3; i <= NF; i++) if ($i == unit) v[n++] = $(i-1) }
		END {
			if (n == 0) { print "missing"; exit }
			for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
			print v[int((n - 1) / 2)]
		}' "$log"
}
fail=0
check() { # value op target
	awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == "ge" && v >= t) || (op == "le" && v <= t); print ok ? "PASS" : "FAIL" }'
}
row() { # label value target-text result
	printf '%-62s %12s %10s  %s\n' "$1" "$2" "$3" "$4"
	[ "$4" != FAIL ] || fail=1
}
echo
printf '%-62s %12s %10s  %s\n' "metric (median of $count)" "value" "target" "result"
printf '%-62s %12s %10s  %s\n' "------" "-----" "------" "------"
bp=$(median base '^BenchmarkForwarding-' userspace-pps)
hp=$(median head '^BenchmarkForwarding-' userspace-pps)
bt=$(median base '^BenchmarkForwarding-' userspace/txonly)
ht=$(median head '^BenchmarkForwarding-' userspace/txonly)
row "plain forwarding, 64 B UDP, before NAT (pps)" "$bp" "" ""
row "plain forwarding, 64 B UDP, with NAT built in (pps)" "$hp" "" ""
row "  same, as a share of the TX-only ceiling: before / after" "$bt / $ht" "" ""
row "plain per-packet work, no I/O: before / after (ns)" "$(median base '^BenchmarkClassifyPlain-' ns/packet) / $(median head '^BenchmarkClassifyPlain-' ns/packet)" "" ""
pl=$(median head '^BenchmarkClassifyNAT-' plain-ns/packet)
si=$(median head '^BenchmarkClassifyNAT-' snat-initiator-ns/packet)
sr=$(median head '^BenchmarkClassifyNAT-' snat-reply-ns/packet)
row "per-packet work, no I/O: plain / SNAT initiator / SNAT reply (ns)" "$pl / $si / $sr" "" ""
row "  plain / SNAT initiator, plain / SNAT reply (same run)" "$(median head '^BenchmarkClassifyNAT-' plain/initiator) / $(median head '^BenchmarkClassifyNAT-' plain/reply)" "" ""
v=$(median head '^BenchmarkNATForwarding-' snat/plain)
row "established SNAT flow / plain flow (same run)" "$v" ">= 0.9" "$(check "$v" ge 0.9)"
row "  plain / SNAT (pps)" "$(median head '^BenchmarkNATForwarding-' plain-pps) / $(median head '^BenchmarkNATForwarding-' snat-pps)" "" ""
v=$(median head '^BenchmarkNATNewConnections-' snat/plain)
row "new translated TCP connections / new plain ones" "$v" ">= 0.7" "$(check "$v" ge 0.7)"
row "  plain / SNAT (completed handshakes per s)" "$(median head '^BenchmarkNATNewConnections-' plain-conn/s) / $(median head '^BenchmarkNATNewConnections-' snat-conn/s)" "" ""
v=$(median head '^BenchmarkResourceStatsNATPool/no-nat/fresh-' µs/report)
row "ResourceStats, 4 bindings x 64 shards, no NAT (us)" "$v" "<= 20" "$(check "$v" le 20)"
v=$(median head '^BenchmarkResourceStatsNATPool/pool-64512-ports-90%/fresh-' µs/report)
row "ResourceStats, same + 64 512-port pool 90 % held (us)" "$v" "<= 20" "$(check "$v" le 20)"
row "  same, into a reused report: no NAT / pool (us)" "$(median head '^BenchmarkResourceStatsNATPool/no-nat/reused-' µs/report) / $(median head '^BenchmarkResourceStatsNATPool/pool-64512-ports-90%/reused-' µs/report)" "" ""
exit $fail
