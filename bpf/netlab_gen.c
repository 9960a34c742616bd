//go:build ignore

// netlab_gen is the traffic generator of internal/netlab. Go runs it with
// BPF_PROG_RUN and BPF_F_TEST_XDP_LIVE_FRAMES; every XDP_TX it returns sends
// one frame out of the interface named by the run's ingress ifindex.
//
// The kernel recycles live-frame pages without re-initialising them, and a
// receiver may have rewritten a page in place (a firewall rewriting MACs,
// say), so the template is copied into the frame on every run.
//
// The sent/limit pair makes the count exact: cilium/ebpf restarts an
// interrupted BPF_PROG_RUN with its full repeat count, so the program, not
// the repeat count, decides how many frames go out.
//
// Many flows: with flows > 1, frame number n (counted by sent) carries flow
// f = n % flows: source port sport0 + f % nports and source address (its
// low 32 bits) saddr0 + f / nports, with the L4 checksum (and the IPv4
// header checksum for an address) updated incrementally (RFC 1624). Go
// computes the offsets from the template and checks that nothing wraps.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NETLAB_MAX_FRAME 2048

char __license[] SEC("license") = "Dual MIT/GPL";

// Written by Go before each run.
__u8 tmpl[NETLAB_MAX_FRAME];
__u32 tmpl_len;
__u64 limit;

// Many flows, written by Go; flows 0 or 1 sends the template as it is.
// Offsets are into the frame; csum_off 0 means no L4 checksum to update,
// ipcsum_off 0 means no IPv4 header checksum (IPv6).
__u32 flows;
__u32 nports;
__u32 sport_off;
__u32 saddr_off;
__u32 csum_off;
__u32 ipcsum_off;
__u8 csum_udp; // the L4 checksum is UDP's: a result of 0 is sent as 0xffff
__u16 sport0;  // host order
__u32 saddr0;  // host order

// Read by Go: frames handed to XDP_TX so far.
__u64 sent;

// Header offsets stay far below this; the bound is for the verifier.
#define NETLAB_MAX_OFF 256

// load16 reads two template bytes as the CPU loads them from a frame (both
// sides of a checksum update use the same order, so it needs no swap).
static __always_inline __u16 load16(__u32 off)
{
	if (off > NETLAB_MAX_OFF)
		return 0;
	return tmpl[off] | (__u16)tmpl[off + 1] << 8;
}

// csum_add16 is the one's complement change of replacing word old by new.
static __always_inline __u32 csum_add16(__u16 old, __u16 new)
{
	return (__u16)~old + (__u32)new;
}

// csum_store folds delta into the checksum at off (template value) and
// writes it to the frame.
static __always_inline int csum_store(struct xdp_md *ctx, __u32 off, __u32 delta, int udp)
{
	__u32 sum = (__u16)~load16(off) + delta;
	__u16 check;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	check = ~sum;
	if (udp && check == 0)
		check = 0xffff;
	return bpf_xdp_store_bytes(ctx, off, &check, sizeof(check));
}

// vary rewrites the frame's source to flow f.
static __always_inline int vary(struct xdp_md *ctx, __u64 f)
{
	__u32 np = nports ? nports : 1;
	__u16 port_old = bpf_htons(sport0), port_new = bpf_htons(sport0 + (__u16)(f % np));
	__u32 addr_old = bpf_htonl(saddr0), addr_new = bpf_htonl(saddr0 + (__u32)(f / np));
	__u32 l4 = 0, l3 = 0;

	if (sport_off > NETLAB_MAX_OFF || saddr_off > NETLAB_MAX_OFF ||
	    csum_off > NETLAB_MAX_OFF || ipcsum_off > NETLAB_MAX_OFF)
		return -1;
	if (port_new != port_old) {
		l4 += csum_add16(port_old, port_new);
		if (bpf_xdp_store_bytes(ctx, sport_off, &port_new, sizeof(port_new)))
			return -1;
	}
	if (addr_new != addr_old) {
		l3 = csum_add16(addr_old & 0xffff, addr_new & 0xffff) +
		     csum_add16(addr_old >> 16, addr_new >> 16);
		l4 += l3;
		if (bpf_xdp_store_bytes(ctx, saddr_off, &addr_new, sizeof(addr_new)))
			return -1;
		if (ipcsum_off && csum_store(ctx, ipcsum_off, l3, 0))
			return -1;
	}
	if (csum_off && l4 && csum_store(ctx, csum_off, l4, csum_udp))
		return -1;
	return 0;
}

SEC("xdp")
int netlab_gen(struct xdp_md *ctx)
{
	// Zero-extended to 64 bits so the verifier sees the bound checked
	// below on the very register passed to the helper.
	__u64 n = tmpl_len;

	// Only the Go side runs this program, on one CPU per run, so sent
	// needs no atomics.
	if (sent >= limit)
		return XDP_DROP;
	if (n == 0 || n > NETLAB_MAX_FRAME)
		return XDP_ABORTED;
	if ((__u64)(ctx->data_end - ctx->data) != n)
		return XDP_ABORTED;
	if (bpf_xdp_store_bytes(ctx, 0, tmpl, n))
		return XDP_ABORTED;
	if (flows > 1 && vary(ctx, sent % flows))
		return XDP_ABORTED;
	sent++;
	return XDP_TX;
}
