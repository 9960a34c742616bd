#!/usr/bin/env bash
# Every speed target of the eBPF backend, side by side (needs root):
#   map counting: walk >= 2x Map.Iterate, batch >= 3 M entries/s, kfunc <= 1 ms
#     (scripts/bench-mapcount.sh prints that table first)
#   ResourceStats of the whole backend, 1 Mi-entry session map full, kfunc: <= 1 ms
#   forwarding: firewall program >= 0.9x a bare bpf_redirect program, same run
# Usage: scripts/bench-ebpf.sh     (env: COUNT=3)
set -uo pipefail
cd "$(dirname "$0")/.."
: "${COUNT:=3}"
status=0
COUNT=$COUNT scripts/bench-mapcount.sh || status=1

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Forwarding floods 4 Mi frames per iteration (a few seconds): 3 iterations
# per run; a report costs microseconds: 20.
for cmd in "go test -run ^\$ -bench ^BenchmarkResourceStats1M\$ -benchtime 20x -count $COUNT ./ebpfbackend/" \
	"go test -run ^\$ -bench ^BenchmarkForwarding\$ -benchtime 3x -count $COUNT ./ebpfbackend/"; do
	echo "# FWPLANE_REQUIRE_PRIVILEGED=1 $cmd" >&2
	FWPLANE_REQUIRE_PRIVILEGED=1 $cmd | tee -a "$out" >&2
done

awk -v count="$COUNT" '
function median(a, n,   i, j, x) {
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^BenchmarkResourceStats1M\/kfunc/ { for (i = 3; i <= NF; i++) if ($(i) == "ns/op") rs[++nrs] = $(i - 1) }
/^BenchmarkResourceStats1M\/batch/ { for (i = 3; i <= NF; i++) if ($(i) == "ns/op") rb[++nrb] = $(i - 1) }
/^BenchmarkForwarding/ {
	for (i = 3; i <= NF; i++) {
		if ($(i) == "fw/bare") { ratio[++nr] = $(i - 1); runs = runs sprintf(" %.3f", $(i - 1)) }
		if ($(i) == "fw-pps") fw[++nf] = $(i - 1)
		if ($(i) == "bare-pps") bare[++nb] = $(i - 1)
		if ($(i) == "fw-prog-ns/pkt") fns[++nfn] = $(i - 1)
		if ($(i) == "bare-prog-ns/pkt") bns[++nbn] = $(i - 1)
	}
}
END {
	if (!nrs || !nr) { print "bench-ebpf: no results (skipped?)" > "/dev/stderr"; exit 1 }
	k = median(rs, nrs); r = median(ratio, nr)
	printf "\n%-46s %16s  %-10s %s\n", "metric", "measured", "target", "result"
	printf "%-46s %13.1f µs  %-10s %s\n", "ResourceStats, 1 Mi sessions (table full), kfunc", k / 1e3, "<= 1 ms", (k <= 1e6 ? "PASS" : "FAIL")
	printf "%-46s %13.1f ms  %-10s %s\n", "ResourceStats, same, batch (for comparison)", median(rb, nrb) / 1e6, "-", "-"
	printf "%-46s %12.2f Mpps  %-10s %s\n", "forwarding, firewall program", median(fw, nf) / 1e6, "-", "-"
	printf "%-46s %12.2f Mpps  %-10s %s\n", "forwarding, bare bpf_redirect program", median(bare, nb) / 1e6, "-", "-"
	printf "%-46s %13.1f ns  %-10s %s\n", "program run time per packet: firewall / bare", median(fns, nfn), "-", sprintf("bare %.1f ns", median(bns, nbn))
	printf "%-46s %16.3f  %-10s %s   (runs:%s)\n", "forwarding ratio firewall/bare (median)", r, ">= 0.9", (r >= 0.9 ? "PASS" : "FAIL"), runs
	exit (k <= 1e6 && r >= 0.9) ? 0 : 1
}' "$out" || status=1
exit $status
