#!/usr/bin/env bash
# Baseline table: TCP bulk (iperf3, 1 and 4 streams), 64-byte UDP (the
# live-frames generator, one flow and 64 Ki flows) and new TCP connections
# per second (real sockets) through the lab's firewall namespace, for
# every dataplane column, on the lab's veth settings and on kernel-default
# veths, all in one run. Needs root.
#
# Columns come from Go benchmarks named BenchmarkBaselines in the packages
# below, each calling netlab.BenchBaselines with its dataplanes (the kernel's
# own columns, plain forwarding and nftables with conntrack, are in
# internal/netlab). To add a column: write that benchmark in your package
# and add the package here.
#
# Usage: scripts/bench-baselines.sh      (env: COUNT=3 runs per cell, median shown)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COUNT:=3}"
pkgs=(
	./internal/netlab/
)
# Packages that have a BenchmarkBaselines are picked up on their own.
for p in ./ebpfbackend/ ./userspacebackend/; do
	if grep -qs '^func BenchmarkBaselines(' "$p"*_test.go; then pkgs+=("$p"); fi
done

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v nft >/dev/null || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
	echo "== installing ${need[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
cmd="go test -count=1 -run ^\$ -bench ^BenchmarkBaselines\$ -benchtime 1x -count $COUNT -timeout 60m ${pkgs[*]}"
echo "# FWPLANE_REQUIRE_PRIVILEGED=1 $cmd" >&2
FWPLANE_REQUIRE_PRIVILEGED=1 $cmd | tee "$out" | grep -E '^(cpu|Benchmark|FAIL|---)' >&2

awk '
function median(s,   a, n, i, j, x) {
	n = split(s, a, " ")
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { x = a[i]; a[i] = a[j]; a[j] = x }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^BenchmarkBaselines\// {
	split($1, p, "/")
	dp = p[2]; sub(/^dp=/, "", dp)
	veth = p[3]; sub(/^veth=/, "", veth)
	metric = p[4]; sub(/-[0-9]+$/, "", metric)
	for (i = 3; i < NF; i++) if ($(i + 1) == "Gbit/s" || $(i + 1) == "Mpps" || $(i + 1) == "conn/s") { v = $(i); unit = $(i + 1) }
	if (!(dp in seen)) { seen[dp] = 1; cols[++ncol] = dp }
	row = veth SUBSEP metric
	if (!(row in rseen)) { rseen[row] = 1; rows[++nrow] = row; units[row] = unit }
	vals[row, dp] = vals[row, dp] " " v
}
END {
	if (!nrow) { print "bench-baselines: no results (skipped?)" > "/dev/stderr"; exit 1 }
	printf "\n%-10s %-11s %-7s", "veth", "traffic", "unit"
	for (c = 1; c <= ncol; c++) printf " %12s", cols[c]
	printf "\n"
	for (r = 1; r <= nrow; r++) {
		split(rows[r], k, SUBSEP)
		printf "%-10s %-11s %-7s", k[1], k[2], units[rows[r]]
		for (c = 1; c <= ncol; c++) {
			s = vals[rows[r], cols[c]]
			if (s == "") printf " %12s", "-"; else printf " %12.2f", median(s)
		}
		printf "\n"
	}
	printf "\nmedian of %s runs per cell; tcp-N: iperf3 TCP, N streams, 3 s; udp-64: 64-byte UDP frames of one flow, 2 s;\n", '"$COUNT"'
	printf "udp-64-64k: the same over 65536 flows; conn: TCP connections opened and reset, 16 in flight, 2 s\n"
}' "$out"
