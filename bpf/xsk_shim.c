//go:build ignore

/* XDP shim for the userspace (AF_XDP) backend.
 *
 * Loaded and attached by userspacebackend/internal/xsk (bpf2go). On a managed
 * interface it hands every IP frame to the AF_XDP socket bound to the queue it
 * arrived on, and gives the kernel only what the kernel must answer itself:
 *
 *   - non-IP frames (ARP, LLDP, ...)             -> XDP_PASS  (pass_non_ip)
 *   - IPv6 neighbour discovery, ICMPv6 133-137    -> XDP_PASS  (pass_nd)
 *   - IP frames to one of the firewall's own
 *     addresses (local_addrs, programmed by Go)   -> XDP_PASS  (pass_local)
 *   - any other IP frame                          -> XSKMAP    (redirected)
 *     ... unless no ready socket serves the queue -> XDP_DROP  (drop_no_socket)
 *     ... or the queue's heartbeat is stale       -> XDP_DROP  (drop_heartbeat_stale)
 *
 * Why a local-address map and not a FIB lookup: the firewall's own addresses
 * are few, known to the control plane, and change rarely; a hash lookup is
 * exact and costs one probe, while bpf_fib_lookup would also classify
 * forwarded traffic and depends on kernel routing state the userspace
 * dataplane deliberately does not use.
 *
 * Fail closed: a queue without a ready socket drops IP traffic instead of
 * passing it, so the kernel never forwards or answers for flows the firewall
 * owns while the userspace side is (re)starting. "Ready" is a separate flag
 * because an XSKMAP entry exists as soon as the socket is inserted, before its
 * fill ring is primed; Go sets the flag last and clears it first.
 *
 * Fail closed when the process dies: the shim's bpf_link and maps can be
 * pinned (Options.PinDir), so the shim stays attached when the process that
 * owns the sockets dies. Its sockets close with it (the kernel removes them
 * from xsks), and the worker of each queue stops writing its heartbeat: once
 * heartbeat[queue] is older than conf.heartbeat_limit_ns, transit frames are
 * dropped and counted as drop_heartbeat_stale, while ARP, ND and frames to
 * the firewall's own addresses still go to the kernel (the box stays
 * reachable for management). A worker that is alive but stuck looks the same.
 * The heartbeat is CLOCK_MONOTONIC nanoseconds; the shim compares it with
 * bpf_ktime_get_coarse_ns (the same clock at tick resolution, kernel 5.11):
 * 3 ns per frame where bpf_ktime_get_ns cost 25 here, and a tick (1-4 ms)
 * is nothing against a limit of hundreds of milliseconds. */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Upper bound on RX queues per interface; Go may lower max_entries. */
#define XSK_MAX_QUEUES 64
#define XSK_MAX_LOCAL_ADDRS 256

/* Order and names mirror shimCounterNames in userspacebackend/internal/xsk. */
enum xsk_counter {
	XSK_CNT_REDIRECTED = 0,
	XSK_CNT_PASS_NON_IP,
	XSK_CNT_PASS_ND,
	XSK_CNT_PASS_LOCAL,
	XSK_CNT_DROP_NO_SOCKET,
	XSK_CNT_DROP_HEARTBEAT_STALE,
	XSK_CNT_MAX,
};

/* An address of the firewall itself: IPv4 as v4-mapped IPv6 (::ffff:a.b.c.d),
 * network byte order, so one map serves both families. */
struct xsk_local_key {
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XSK_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* 1 when the socket in xsks[queue] is bound and its fill ring primed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XSK_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} ready SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XSK_MAX_LOCAL_ADDRS);
	__type(key, struct xsk_local_key);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* The counters: one cache line per CPU in an mmapable array, which Go reads
 * through a read-only mapping without a system call (ResourceStats reads
 * every shim; a per-CPU array costs a BPF_MAP_LOOKUP_BATCH each time). Each
 * CPU writes only its own element, so no atomic is needed; Go sets
 * max_entries to the number of possible CPUs before loading. */
#define XSK_CNT_SLOTS 8
struct xsk_cpu_counters {
	__u64 c[XSK_CNT_SLOTS];
};
_Static_assert(XSK_CNT_MAX <= XSK_CNT_SLOTS, "counters do not fit a cache line");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xsk_cpu_counters);
} counters SEC(".maps");

/* What Go sets when it loads or adopts the shim. */
struct xsk_conf {
	/* Transit frames are dropped once the queue's heartbeat is older than
	 * this; 0 turns the check off. */
	__u64 heartbeat_limit_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xsk_conf);
} conf SEC(".maps");

/* heartbeat[queue]: when the queue's worker last made progress. Mmapable:
 * the worker writes it as memory, without a system call. One cache line per
 * queue, so two workers never write the same line. */
struct xsk_heartbeat {
	__u64 ns;
	__u64 pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, XSK_MAX_QUEUES);
	__type(key, __u32);
	__type(value, struct xsk_heartbeat);
} heartbeat SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int count(__u32 idx, int verdict)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct xsk_cpu_counters *c = bpf_map_lookup_elem(&counters, &cpu);

	if (c && idx < XSK_CNT_SLOTS)
		c->c[idx] += 1; /* this CPU's element: no atomic needed */
	return verdict;
}

static __always_inline int is_local(struct xsk_local_key *k)
{
	return bpf_map_lookup_elem(&local_addrs, k) != NULL;
}

/* stale reports whether queue q's worker has not beaten within the limit.
 * A heartbeat ahead of now (the coarse clock lags the one Go writes by up to
 * a tick) is fresh. */
static __always_inline int stale(__u32 q)
{
	__u32 zero = 0;
	struct xsk_conf *c = bpf_map_lookup_elem(&conf, &zero);
	struct xsk_heartbeat *h;
	__u64 last, now;

	if (!c || !c->heartbeat_limit_ns)
		return 0;
	h = bpf_map_lookup_elem(&heartbeat, &q);
	if (!h)
		return 1;
	last = *(volatile __u64 *)&h->ns;
	now = bpf_ktime_get_coarse_ns();
	return now > last && now - last > c->heartbeat_limit_ns;
}

static __always_inline int to_socket(struct xdp_md *ctx)
{
	__u32 q = ctx->rx_queue_index;
	__u32 *r = bpf_map_lookup_elem(&ready, &q);

	if (!r || !*r)
		return count(XSK_CNT_DROP_NO_SOCKET, XDP_DROP);
	if (stale(q))
		return count(XSK_CNT_DROP_HEARTBEAT_STALE, XDP_DROP);
	/* The low bits of flags are the action when xsks[q] is empty: a socket
	 * removed between the flag check and here is still a drop. */
	if (bpf_redirect_map(&xsks, q, XDP_DROP) == XDP_REDIRECT)
		return count(XSK_CNT_REDIRECTED, XDP_REDIRECT);
	return count(XSK_CNT_DROP_NO_SOCKET, XDP_DROP);
}

SEC("xdp")
int xsk_shim(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct xsk_local_key key = {};
	void *l3;
	__be16 proto;

	if ((void *)(eth + 1) > end)
		return count(XSK_CNT_PASS_NON_IP, XDP_PASS);
	proto = eth->h_proto;
	l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = l3;

		if ((void *)(vh + 1) > end)
			return count(XSK_CNT_PASS_NON_IP, XDP_PASS);
		proto = vh->proto;
		l3 = vh + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;

		/* A truncated IP header cannot be classified: the dataplane gets
		 * it and drops it, rather than the kernel. */
		if ((void *)(ip + 1) > end)
			return to_socket(ctx);
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &ip->daddr, 4);
		if (is_local(&key))
			return count(XSK_CNT_PASS_LOCAL, XDP_PASS);
		return to_socket(ctx);
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > end)
			return to_socket(ctx);
		/* ND messages carry no extension headers (RFC 4861 requires hop
		 * limit 255 and a bare ICMPv6 header), so nexthdr is enough. */
		if (ip6->nexthdr == IPPROTO_ICMPV6) {
			__u8 *type = (void *)(ip6 + 1);

			if ((void *)(type + 1) <= end && *type >= 133 && *type <= 137)
				return count(XSK_CNT_PASS_ND, XDP_PASS);
		}
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
		if (is_local(&key))
			return count(XSK_CNT_PASS_LOCAL, XDP_PASS);
		return to_socket(ctx);
	}

	return count(XSK_CNT_PASS_NON_IP, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
