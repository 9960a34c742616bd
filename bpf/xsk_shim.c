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
 *     ... unless the address is also a NAT address
 *     (nat_addrs) and no local socket owns the
 *     frame: see "Address translation" below      -> XSKMAP    (redirected)
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

/* ---- Address translation (userspace NAT, dataplane/nat.go) ----------------
 *
 * A NAT address that is also one of the firewall's own (masquerade: the
 * egress interface's address; a pool or port-forwarding address configured
 * on an interface) receives two kinds of traffic: replies of translated
 * flows and forwarded ports, which the dataplane owns, and the firewall's
 * own traffic, which the kernel owns. Go lists such addresses in nat_addrs
 * with what they are used for; for a frame to one of them the shim asks the
 * kernel whether a local socket owns it (bpf_skc_lookup_tcp,
 * bpf_sk_lookup_udp: established, time-wait and listening TCP sockets, bound
 * UDP sockets) and otherwise hands it to the dataplane:
 *
 *   - TCP, UDP: to the kernel when a local socket matches, else the dataplane
 *     (a forwarded port the firewall itself listens on stays the kernel's);
 *   - ICMP echo reply: the dataplane (replies of translated pings);
 *   - ICMP echo request: the dataplane if a destination rule forwards ICMP
 *     to the address (NAT_STEER_ECHO), else the kernel (the firewall answers);
 *   - ICMP errors: by the quoted packet: to the kernel when a local socket
 *     sent it (path MTU of the firewall's own connections), else the
 *     dataplane (errors about translated flows, translated back there);
 *   - anything else: the dataplane if a destination rule forwards every
 *     protocol (NAT_STEER_ALL), else the kernel.
 *
 * Ports the firewall's own unconnected UDP sockets are bound to win over
 * translated flows: keep ip_local_port_range and the NAT port ranges apart on
 * an address used for both. */
#define XSK_MAX_NAT_ADDRS XSK_MAX_LOCAL_ADDRS
#define NAT_STEER_REPLY 0x01
#define NAT_STEER_ECHO 0x02
#define NAT_STEER_ALL 0x04

/* ICMP (linux/icmp.h pulls in libc headers a BPF target does not have). */
#define NAT_ICMP_ECHOREPLY 0
#define NAT_ICMP_DEST_UNREACH 3
#define NAT_ICMP_ECHO 8
#define NAT_ICMP_TIME_EXCEEDED 11
#define NAT_ICMP_PARAMETERPROB 12
struct nat_icmphdr {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be32 rest;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XSK_MAX_NAT_ADDRS);
	__type(key, struct xsk_local_key);
	__type(value, __u8);
} nat_addrs SEC(".maps");

/* local_socket reports whether a local socket owns a TCP or UDP packet from
 * saddr:sport to daddr:dport (network byte order). */
static __always_inline int local_socket(struct xdp_md *ctx, __u8 proto, __be32 saddr, __be32 daddr, __be16 sport,
					__be16 dport)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = saddr;
	t.ipv4.daddr = daddr;
	t.ipv4.sport = sport;
	t.ipv4.dport = dport;
	if (proto == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* nat_steer reports whether a frame to a local NAT address (flags from
 * nat_addrs) belongs to the dataplane; ip is its bounds-checked header at
 * offset l3off. What follows the IP header is read with bpf_xdp_load_bytes at
 * computed offsets: variable packet-pointer arithmetic needs CAP_PERFMON,
 * which the userspace backend does not ask for. */
static __always_inline int nat_steer(struct xdp_md *ctx, struct iphdr *ip, __u32 l3off, __u8 flags)
{
	__u32 ihl = ip->ihl * 4;
	__u32 l4off = l3off + ihl;
	struct nat_icmphdr ic;
	struct iphdr in;
	__be16 ports[2];
	__u32 iihl;

	if (ihl < sizeof(*ip) || (ip->frag_off & bpf_htons(0x1fff)))
		return 0; /* later fragments: the kernel reassembles its own */
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		if (bpf_xdp_load_bytes(ctx, l4off, ports, sizeof(ports)))
			return 0;
		return !local_socket(ctx, ip->protocol, ip->saddr, ip->daddr, ports[0], ports[1]);
	}
	if (ip->protocol != IPPROTO_ICMP)
		return (flags & NAT_STEER_ALL) != 0;
	if (bpf_xdp_load_bytes(ctx, l4off, &ic, sizeof(ic)))
		return 0;
	switch (ic.type) {
	case NAT_ICMP_ECHOREPLY:
		return 1;
	case NAT_ICMP_ECHO:
		return (flags & (NAT_STEER_ECHO | NAT_STEER_ALL)) != 0;
	case NAT_ICMP_DEST_UNREACH:
	case NAT_ICMP_TIME_EXCEEDED:
	case NAT_ICMP_PARAMETERPROB:
		break;
	default:
		return (flags & NAT_STEER_ALL) != 0;
	}
	if (bpf_xdp_load_bytes(ctx, l4off + sizeof(ic), &in, sizeof(in)))
		return 1;
	iihl = in.ihl * 4;
	if (iihl < sizeof(in) || (in.protocol != IPPROTO_TCP && in.protocol != IPPROTO_UDP))
		return 1;
	if (bpf_xdp_load_bytes(ctx, l4off + sizeof(ic) + iihl, ports, sizeof(ports)))
		return 1;
	/* The quote is a packet the firewall sent: its own socket would
	 * receive the reverse. */
	return !local_socket(ctx, in.protocol, in.daddr, in.saddr, ports[1], ports[0]);
}

/* ---- end of address translation ------------------------------------------ */
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
	__u32 l3off = sizeof(*eth); /* l3 - data, for the NAT steering */
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
		l3off += sizeof(*vh);
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
		if (is_local(&key)) {
			__u8 *nat = bpf_map_lookup_elem(&nat_addrs, &key);

			if (nat && nat_steer(ctx, ip, l3off, *nat))
				return to_socket(ctx);
			return count(XSK_CNT_PASS_LOCAL, XDP_PASS);
		}
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
