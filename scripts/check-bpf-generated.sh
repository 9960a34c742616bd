#!/usr/bin/env bash
# Regenerates every bpf2go output with the pinned compiler and fails if the
# committed files differ: the committed .o files are what `go build` embeds,
# so they must be exactly what the C sources compile to.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${BPF_CLANG:=clang-14}"
# bpf2go reads the compiler from BPF2GO_CC (default "clang", which Debian's
# clang-14 package does not provide) and derives llvm-strip-14 from it.
export BPF_CLANG BPF2GO_CC="$BPF_CLANG"
if ! command -v "$BPF_CLANG" >/dev/null; then
	echo "check-bpf-generated: $BPF_CLANG not found (apt-get install clang-14)" >&2
	exit 1
fi
"$BPF_CLANG" --version | head -1

# Only packages that have a go:generate line for bpf2go.
pkgs=$(grep -rl --include='*.go' 'go:generate go tool bpf2go' . | xargs -r -n1 dirname | sort -u)
if [ -z "$pkgs" ]; then
	echo "check-bpf-generated: no bpf2go packages found" >&2
	exit 1
fi
for p in $pkgs; do
	echo "go generate $p"
	go generate "$p"
done

status=$(git status --porcelain -- '*_bpfel.go' '*_bpfeb.go' '*_bpfel.o' '*_bpfeb.o')
if [ -n "$status" ]; then
	echo "check-bpf-generated: generated BPF objects differ from the committed ones:" >&2
	echo "$status" >&2
	git --no-pager diff --stat -- '*_bpfel.go' '*_bpfeb.go' '*_bpfel.o' '*_bpfeb.o' >&2 || true
	echo "run: BPF_CLANG=$BPF_CLANG go generate ./... and commit the result" >&2
	exit 1
fi
echo "check-bpf-generated: committed BPF objects match the sources"
