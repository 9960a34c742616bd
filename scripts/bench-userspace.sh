#!/bin/sh
# Side-by-side forwarding benchmark of the userspace (AF_XDP) backend against
# the AF_XDP TX-only ceiling, kernel forwarding, the eBPF backend and a naive
# one-frame-at-a-time AF_XDP forwarder, plus the cost of ResourceStats.
# Needs root (BPF, network namespaces). Usage: scripts/bench-userspace.sh [count]
set -eu
cd "$(dirname "$0")/.."
count=${1:-3}
out=$(go test -count=1 -run '^$' \
	-bench '^(BenchmarkForwarding|BenchmarkResourceStatsPolledDuringForwarding)$' \
	-benchtime "${count}x" ./userspacebackend/
	go test -count=1 -run '^$' -bench '^BenchmarkResourceStats$' -benchtime 20000x ./userspacebackend/)
echo "$out" | grep -E '^(goos|goarch|cpu|Benchmark)'
echo
echo "$out" | awk '
/^BenchmarkForwarding/ {
	for (i = 3; i < NF; i += 2) m[$(i+1)] = $i
	printf "%-34s %12s %8s\n", "forwarder (64-byte UDP, 1 flow)", "pps", "ratio"
	printf "%-34s %12.0f %8.2f\n", "userspace backend", m["userspace-pps"], 1
	printf "%-34s %12.0f %8.2f\n", "AF_XDP TX-only ceiling", m["txonly-pps"], m["txonly-pps"] / m["userspace-pps"]
	printf "%-34s %12.0f %8.2f\n", "  same, generator flooding too", m["txonly-loaded-pps"], m["txonly-loaded-pps"] / m["userspace-pps"]
	printf "%-34s %12.0f %8.2f\n", "kernel forwarding (no XDP)", m["kernel-pps"], m["kernel-pps"] / m["userspace-pps"]
	printf "%-34s %12.0f %8.2f\n", "eBPF backend", m["ebpf-pps"], m["ebpf-pps"] / m["userspace-pps"]
	printf "%-34s %12.0f %8.2f\n", "naive AF_XDP forwarder", m["naive-pps"], m["naive-pps"] / m["userspace-pps"]
	printf "userspace/txonly %.2f (target >= 0.85), userspace/naive %.2f (target >= 1.2)\n", m["userspace/txonly"], m["userspace/naive"]
	printf "userspace/txonly with the generator flooding the other port: %.2f\n", m["userspace/txonly-loaded"]
}
/^BenchmarkResourceStats\/fresh-/ {
	for (i = 3; i < NF; i += 2) m[$(i+1)] = $i
	printf "ResourceStats, 4 bindings x 64 shards: %.1f us/report (target <= 20)\n", m["µs/report"]
}
/^BenchmarkResourceStats\/reused-/ {
	for (i = 3; i < NF; i += 2) m[$(i+1)] = $i
	printf "ResourceStatsInto (report reused), same: %.1f us/report\n", m["µs/report"]
}
/^BenchmarkResourceStatsPolled/ {
	for (i = 3; i < NF; i += 2) m[$(i+1)] = $i
	printf "ResourceStats at 10 Hz during forwarding: %.0f pps quiet, %.0f pps polled, cost %.2f %% (target < 1)\n", m["quiet-pps"], m["polled-pps"], m["cost-%"]
}'
