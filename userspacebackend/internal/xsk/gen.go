package xsk

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I../../../bpf/include" xskShim ../../../bpf/xsk_shim.c
