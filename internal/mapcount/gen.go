package mapcount

// The iterator program is compiled with the pinned clang (BPF2GO_CC=clang-14)
// and its output committed, so building the package needs no clang.
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I../../bpf/include" mapcount ../../bpf/mapcount.c
