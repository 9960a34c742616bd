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

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NETLAB_MAX_FRAME 2048

char __license[] SEC("license") = "Dual MIT/GPL";

// Written by Go before each run.
__u8 tmpl[NETLAB_MAX_FRAME];
__u32 tmpl_len;
__u64 limit;

// Read by Go: frames handed to XDP_TX so far.
__u64 sent;

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
	sent++;
	return XDP_TX;
}
