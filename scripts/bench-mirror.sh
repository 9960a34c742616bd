#!/usr/bin/env bash
# Port mirroring's speed target, both backends side by side (needs root):
#   primary forwarding with rate-1 mirroring >= 0.7x the same run without
# (eBPF: through the mirror stage on the next CPU; the inline clone of
# Options.MirrorInline is printed beside it)
# 64-byte UDP of one established flow, client -> firewall -> server, the
# client ingress mirrored to the sink namespace; each backend measures the
# unmirrored and the mirrored rate alternately in one run.
# Usage: scripts/bench-mirror.sh     (env: COUNT=3)
set -uo pipefail
cd "$(dirname "$0")/.."
: "${COUNT:=3}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cmd="go test -run ^\$ -bench ^BenchmarkMirrorForwarding\$ -benchtime 2x -count $COUNT ./ebpfbackend/ ./userspacebackend/"
echo "# FWPLANE_REQUIRE_PRIVILEGED=1 $cmd" >&2
FWPLANE_REQUIRE_PRIVILEGED=1 $cmd | tee "$out" >&2

awk '
function median(a, n,   i, j, x) {
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^pkg: / { pkg = ($2 ~ /ebpfbackend/) ? "ebpf" : "userspace" }
/^BenchmarkMirrorForwarding/ {
	delete m
	for (i = 3; i < NF; i += 2) m[$(i + 1)] = $(i)
	if (pkg == "ebpf") {
		k = ++ne; ep[k] = m["plain-pps"]; em[k] = m["mirror-pps"]; er[k] = m["mirror/plain"]
		es[k] = m["sink-pps"] / m["mirror-pps"]; e10[k] = m["mirror-rate10/plain"]; runs_e = runs_e sprintf(" %.2f", m["mirror/plain"])
		ei[k] = m["inline/plain"]; eis[k] = m["inline-sink-pps"]; esk[k] = m["sink-pps"]
	} else {
		k = ++nu; up[k] = m["plain-pps"]; um[k] = m["mirrored-pps"]; ur[k] = m["mirrored/plain"]
		us[k] = m["sink/forwarded"]; ub[k] = m["primary_backlog/selected"]; runs_u = runs_u sprintf(" %.2f", m["mirrored/plain"])
	}
}
END {
	if (!ne || !nu) { print "bench-mirror: no results (skipped?)" > "/dev/stderr"; exit 1 }
	printf "\n%-10s %12s %12s %14s %18s  %-8s %s\n", "backend", "plain pps", "mirrored pps", "mirrored/plain", "clones delivered", "target", "result"
	r = median(er, ne)
	printf "%-10s %12.0f %12.0f %14.2f %17.0f%%  %-8s %s   (runs:%s; rate 10: %.2f)\n", "ebpf", median(ep, ne), median(em, ne), r, 100 * median(es, ne), ">= 0.7", (r >= 0.7 ? "PASS" : "FAIL"), runs_e, median(e10, ne)
	printf "%-10s stage vs inline: clones %.0f vs %.0f pps; inline (MirrorInline) mirrored/plain %.2f\n", "ebpf", median(esk, ne), median(eis, ne), median(ei, ne)
	q = median(ur, nu)
	printf "%-10s %12.0f %12.0f %14.2f %17.1f%%  %-8s %s   (runs:%s; shed for backlog: %.0f%%)\n", "userspace", median(up, nu), median(um, nu), q, 100 * median(us, nu), ">= 0.7", (q >= 0.7 ? "PASS" : "FAIL"), runs_u, 100 * median(ub, nu)
	exit (r >= 0.7 && q >= 0.7) ? 0 : 1
}' "$out"
