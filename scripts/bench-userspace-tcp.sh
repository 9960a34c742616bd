#!/usr/bin/env bash
# TCP bulk through the firewall namespace, side by side (needs root, iperf3,
# nft, ss): kernel forwarding, nftables with conntrack (what a user would
# pick instead) and the userspace (AF_XDP) backend, with 1 and 4 iperf3
# streams of 3 s, on the netlab veth settings (GRO on, TX checksum off) and
# on the kernel's veth defaults (GRO off, TX checksum and TSO on).
# Goal (issue 12): userspace >= 0.5x nftables. Also printed: forwarded
# frames per second and bytes per frame of the userspace run, what bounds it.
# Figures are medians of COUNT runs.
# Usage: scripts/bench-userspace-tcp.sh     (env: COUNT=3)
set -uo pipefail
cd "$(dirname "$0")/.."
: "${COUNT:=3}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cmd="go test -run ^\$ -bench ^BenchmarkTCPBulk\$ -benchtime 1x -count $COUNT ./userspacebackend/"
echo "# FWPLANE_REQUIRE_PRIVILEGED=1 $cmd" >&2
FWPLANE_REQUIRE_PRIVILEGED=1 $cmd | tee "$out" >&2

awk '
function median(key,   n, i, j, x, a) {
	n = cnt[key]
	for (i = 1; i <= n; i++) a[i] = v[key, i]
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^BenchmarkTCPBulk\// {
	split($1, p, "/"); set = p[2]; sub(/-[0-9]+$/, "", set)
	if (!(set in seen)) { seen[set] = 1; order[++nset] = set }
	for (i = 3; i < NF; i++) { key = set SUBSEP $(i + 1); v[key, ++cnt[key]] = $(i) }
}
END {
	if (!nset) { print "bench-userspace-tcp: no results (skipped?)" > "/dev/stderr"; exit 1 }
	printf "\n%-16s %-8s %10s %10s %10s %9s %12s %9s\n", "veths", "streams", "kernel", "nftables", "userspace", "us/nft", "us kframe/s", "us B/frm"
	for (k = 1; k <= nset; k++) {
		s = order[k]
		for (st = 1; st <= 4; st *= 4) {
			x = "-" st "stream"
			printf "%-16s %-8d %10.2f %10.2f %10.2f %9.2f %12.0f %9.0f\n", s, st,
				median(s SUBSEP "kernel-Gbit/s" x), median(s SUBSEP "nft-Gbit/s" x), median(s SUBSEP "userspace-Gbit/s" x),
				median(s SUBSEP "userspace/nft" x), median(s SUBSEP "userspace-kframes/s" x), median(s SUBSEP "userspace-B/frame" x)
		}
	}
	print "(Gbit/s; goal: userspace/nftables >= 0.5)"
}' "$out"
