//go:build ignore

/* fwplane's eBPF datapath: a stateful zone firewall as one XDP program,
 * attached to every managed interface.
 *
 * Per packet: parse (Ethernet, one 802.1Q tag, IPv4/IPv6, TCP/UDP/ICMP echo)
 * -> hand non-IP and neighbour discovery to the kernel -> session lookup
 * (canonical 5-tuple, both directions hit); an established flow whose
 * session holds a fresh FIB answer for its direction is forwarded at once.
 * Otherwise: ask the kernel's FIB where the packet goes -> pass what is
 * addressed to the firewall itself -> on a session miss, the first matching
 * rule of the (ingress zone, egress zone) pair decides, no match denies ->
 * rewrite L2, decrement TTL, redirect through a devmap.
 *
 * Egress comes from bpf_fib_lookup, i.e. the kernel's routing and neighbour
 * tables in the firewall's namespace. That is deliberate: the operator's routes
 * and the kernel's ARP/ND are authoritative, so there is no second table to
 * keep in sync and no way for the two to disagree for longer than the
 * session's FIB cache (FW_FIB_CACHE_NS). When the kernel has no neighbour
 * entry yet we pass the (already allowed) packet up so the kernel resolves it
 * and forwards this one packet itself. */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fw_common.h"

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_8021Q_ 0x8100

char __license[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fw_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_settings);
} fw_settings_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FW_SLOTS * FW_MAX_IFACES);
	__type(key, struct fw_if_key);
	__type(value, __u32); /* zone id */
} fw_if_zone SEC(".maps");

/* Index: slot * FW_MAX_ZONES^2 + from * FW_MAX_ZONES + to. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_SLOTS * FW_MAX_ZONES * FW_MAX_ZONES);
	__type(key, __u32);
	__type(value, struct fw_pair);
} fw_pairs SEC(".maps");

/* Index: slot * FW_MAX_RULES + rule. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_SLOTS * FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct fw_rule);
} fw_rules SEC(".maps");

/* Capacity is set by the control plane from tables.sessions before load. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fw_sess4_key);
	__type(value, struct fw_sess_val);
} fw_sessions_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fw_sess6_key);
	__type(value, struct fw_sess_val);
} fw_sessions_v6 SEC(".maps");

/* Keyed by egress ifindex: exactly the FIB's answer, no translation. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, FW_MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} fw_tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fw_counters SEC(".maps");

/* ICMP and ICMPv6 share the echo layout; linux/icmp.h would drag in libc. */
struct icmp_echo_ {
	__u8 type;
	__u8 code;
	__sum16 csum;
	__be16 id;
	__be16 seq;
};

#define ICMP_ECHOREPLY_ 0
#define ICMP_ECHO_ 8
#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_ 129

struct vlan_hdr_ {
	__be16 tci;
	__be16 proto;
};

struct pkt {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family; /* 4 or 6 */
	__u8 nonfirst_frag;
	__u8 vlan;
	__u8 ttl;
	__u8 tos;
	__u16 tot_len;
	__be32 flowinfo;
};

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&fw_counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline int pass(__u32 reason)
{
	count(reason);
	return XDP_PASS;
}

static __always_inline int drop(__u32 reason)
{
	count(reason);
	return XDP_DROP;
}

/* Reads ports (or the ICMP echo id, which plays both ports so that request
 * and reply build the same key) from the L4 header at l4. Returns 0, or -1
 * when the header is truncated. Sets *nd for IPv6 neighbour discovery. */
static __always_inline int parse_l4(void *l4, void *end, struct pkt *p, int *nd)
{
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return -1;
		p->sport = th->source;
		p->dport = th->dest;
		return 0;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return -1;
		p->sport = uh->source;
		p->dport = uh->dest;
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct icmp_echo_ *ih = l4;
		if ((void *)(ih + 1) > end)
			return -1;
		if (p->proto == IPPROTO_ICMPV6 && ih->type >= 133 && ih->type <= 137)
			*nd = 1;
		if ((p->proto == IPPROTO_ICMP && (ih->type == ICMP_ECHO_ || ih->type == ICMP_ECHOREPLY_)) ||
		    (p->proto == IPPROTO_ICMPV6 &&
		     (ih->type == ICMPV6_ECHO_REQUEST_ || ih->type == ICMPV6_ECHO_REPLY_))) {
			p->sport = ih->id;
			p->dport = ih->id;
		}
		return 0;
	}
	}
	return 0;
}

static __always_inline __u32 proto_class(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return FW_PC_TCP;
	case IPPROTO_UDP:
		return FW_PC_UDP;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return FW_PC_ICMP;
	}
	return FW_PC_OTHER;
}

static __always_inline int prefix_match(const __u32 *addr, const __u32 *want, const __u32 *mask)
{
	return ((addr[0] & mask[0]) == want[0]) & ((addr[1] & mask[1]) == want[1]) &
	       ((addr[2] & mask[2]) == want[2]) & ((addr[3] & mask[3]) == want[3]);
}

struct eval_ctx {
	const struct pkt *p;
	__u32 base;
	__u32 n;
	__u16 dport;
	__u8 action;
	__u8 pad;
};

/* One rule per call. bpf_loop gets the callback verified once instead of
 * once per unrolled iteration and path, which keeps 256 rules per pair well
 * inside the verifier's budget. Returns 1 to stop. */
static long eval_rule(__u64 i, void *data)
{
	struct eval_ctx *c = data;
	if (i >= c->n)
		return 1;
	__u32 idx = c->base + (__u32)i;
	struct fw_rule *r = bpf_map_lookup_elem(&fw_rules, &idx);
	if (!r)
		return 1;
	const struct pkt *p = c->p;
	if (r->family && r->family != p->family)
		return 0;
	if (r->proto && r->proto != p->proto)
		return 0;
	if (c->dport < r->port_lo || c->dport > r->port_hi)
		return 0;
	if (!prefix_match(p->saddr, r->src_addr, r->src_mask))
		return 0;
	if (!prefix_match(p->daddr, r->dst_addr, r->dst_mask))
		return 0;
	c->action = r->action;
	return 1;
}

/* First match wins; no match (or no rules for the pair) denies. */
static __always_inline int evaluate(__u32 slot, __u32 from, __u32 to, struct pkt *p)
{
	if (from >= FW_MAX_ZONES || to >= FW_MAX_ZONES)
		return FW_DENY;
	__u32 pidx = slot * FW_MAX_ZONES * FW_MAX_ZONES + from * FW_MAX_ZONES + to;
	struct fw_pair *pair = bpf_map_lookup_elem(&fw_pairs, &pidx);
	if (!pair)
		return FW_DENY;
	struct eval_ctx c = {
		.p = p,
		.base = slot * FW_MAX_RULES + pair->start,
		.n = pair->count,
		.dport = bpf_ntohs(p->dport),
		.action = FW_DENY,
	};
	bpf_loop(FW_MAX_RULES_PER_PAIR, eval_rule, &c, 0);
	return c.action;
}

/* Endpoint order for canonical keys. Any total order works as long as both
 * directions agree; comparing network-order words is enough. */
static __always_inline int endpoint_less(const __u32 *a, __be16 ap, const __u32 *b, __be16 bp)
{
	for (int i = 0; i < 4; i++) {
		if (a[i] != b[i])
			return a[i] < b[i];
	}
	return ap <= bp;
}

static __always_inline void *session_key(struct pkt *p, struct fw_sess4_key *k4, struct fw_sess6_key *k6,
					 __u8 *src_is_lo)
{
	int lo = endpoint_less(p->saddr, p->sport, p->daddr, p->dport);
	*src_is_lo = lo;
	if (p->family == 4) {
		__builtin_memset(k4, 0, sizeof(*k4));
		k4->lo_addr = lo ? p->saddr[0] : p->daddr[0];
		k4->hi_addr = lo ? p->daddr[0] : p->saddr[0];
		k4->lo_port = lo ? p->sport : p->dport;
		k4->hi_port = lo ? p->dport : p->sport;
		k4->proto = p->proto;
		return k4;
	}
	__builtin_memset(k6, 0, sizeof(*k6));
	for (int i = 0; i < 4; i++) {
		k6->lo_addr[i] = lo ? p->saddr[i] : p->daddr[i];
		k6->hi_addr[i] = lo ? p->daddr[i] : p->saddr[i];
	}
	k6->lo_port = lo ? p->sport : p->dport;
	k6->hi_port = lo ? p->dport : p->sport;
	k6->proto = p->proto;
	return k6;
}

/* RFC 1624 incremental update for the TTL/protocol word. */
static __always_inline void ipv4_dec_ttl(struct iphdr *iph)
{
	__u16 *word = (__u16 *)&iph->ttl;
	__u32 old = bpf_ntohs(*word);
	iph->ttl--;
	__u32 sum = (~bpf_ntohs(iph->check) & 0xffff) + (~old & 0xffff) + bpf_ntohs(*word);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	iph->check = bpf_htons(~sum & 0xffff);
}

static __always_inline int fib(struct xdp_md *ctx, struct pkt *p, struct bpf_fib_lookup *f, __u16 tot_len)
{
	__builtin_memset(f, 0, sizeof(*f));
	f->ifindex = ctx->ingress_ifindex;
	f->l4_protocol = p->proto;
	f->sport = p->sport;
	f->dport = p->dport;
	f->tot_len = tot_len;
	if (p->family == 4) {
		f->family = AF_INET;
		f->tos = p->tos;
		f->ipv4_src = p->saddr[0];
		f->ipv4_dst = p->daddr[0];
	} else {
		f->family = AF_INET6;
		f->flowinfo = p->flowinfo;
		for (int i = 0; i < 4; i++) {
			f->ipv6_src[i] = p->saddr[i];
			f->ipv6_dst[i] = p->daddr[i];
		}
	}
	return bpf_fib_lookup(ctx, f, sizeof(*f), 0);
}

SEC("xdp")
int xdp_fw(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pkt p = {};
	int nd = 0;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return drop(FW_CNT_DROP_PARSE);
	__be16 h_proto = eth->h_proto;
	void *l3 = eth + 1;
	if (h_proto == bpf_htons(ETH_P_8021Q_)) {
		struct vlan_hdr_ *vh = l3;
		if ((void *)(vh + 1) > end)
			return drop(FW_CNT_DROP_PARSE);
		h_proto = vh->proto;
		l3 = vh + 1;
		p.vlan = 1;
	}

	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = l3;
		if ((void *)(iph + 1) > end)
			return drop(FW_CNT_DROP_PARSE);
		__u32 hlen = iph->ihl * 4;
		if (iph->version != 4 || hlen < sizeof(*iph) || bpf_ntohs(iph->tot_len) < hlen)
			return drop(FW_CNT_DROP_PARSE);
		if (l3 + hlen > end)
			return drop(FW_CNT_DROP_PARSE);
		p.family = 4;
		p.proto = iph->protocol;
		p.saddr[0] = iph->saddr;
		p.daddr[0] = iph->daddr;
		p.ttl = iph->ttl;
		p.tos = iph->tos;
		p.tot_len = bpf_ntohs(iph->tot_len);
		if (iph->frag_off & bpf_htons(0x1fff))
			p.nonfirst_frag = 1;
		else if (parse_l4(l3 + hlen, end, &p, &nd) < 0)
			return drop(FW_CNT_DROP_PARSE);
	} else if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return drop(FW_CNT_DROP_PARSE);
		if (ip6->version != 6)
			return drop(FW_CNT_DROP_PARSE);
		p.family = 6;
		p.proto = ip6->nexthdr;
		__builtin_memcpy(p.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p.daddr, &ip6->daddr, 16);
		p.ttl = ip6->hop_limit;
		p.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		p.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
		if (p.proto == 44 /* fragment header: ports are not where we look */)
			p.nonfirst_frag = 1;
		else if (parse_l4(ip6 + 1, end, &p, &nd) < 0)
			return drop(FW_CNT_DROP_PARSE);
		if (nd)
			return pass(FW_CNT_PASS_ND);
	} else {
		return pass(FW_CNT_PASS_NON_IP);
	}

	__u32 zero = 0;
	__u32 *slotp = bpf_map_lookup_elem(&fw_active, &zero);
	if (!slotp)
		return XDP_ABORTED;
	__u32 slot = *slotp & 1;

	/* The coarse clock is a plain load (jiffy resolution, a few ms), where
	 * bpf_ktime_get_ns reads the clock source: idle timeouts need no better,
	 * and the control plane reads the same clock (CLOCK_MONOTONIC_COARSE). */
	__u64 now = bpf_ktime_get_coarse_ns();
	__u64 bytes = (__u64)(end - data);
	struct fw_settings *set = bpf_map_lookup_elem(&fw_settings_map, &slot);
	if (!set)
		return XDP_ABORTED;
	__u64 timeout = set->timeout_ns[proto_class(p.proto) & (FW_PC_MAX - 1)];

	struct fw_sess4_key k4;
	struct fw_sess6_key k6;
	__u8 src_is_lo;
	void *key = session_key(&p, &k4, &k6, &src_is_lo);
	void *smap = p.family == 4 ? (void *)&fw_sessions_v4 : (void *)&fw_sessions_v6;
	__u32 dir = src_is_lo ? 0 : 1;

	/* One call site per map: with a constant map pointer the verifier
	 * inlines the hash lookup; a pointer that may be either map costs an
	 * indirect call per packet. */
	struct fw_sess_val *sv = NULL;
	if (!p.nonfirst_frag) {
		if (p.family == 4)
			sv = bpf_map_lookup_elem(&fw_sessions_v4, &k4);
		else
			sv = bpf_map_lookup_elem(&fw_sessions_v6, &k6);
	}
	int live = sv && now - sv->last_seen_ns <= timeout;
	struct fw_hop hop;

	if (live) {
		struct fw_hop *h = &sv->hop[dir & 1];
		if (h->checked_ns && now - h->checked_ns < FW_FIB_CACHE_NS) {
			/* Established flow with a fresh FIB answer: no lookup. */
			__builtin_memcpy(&hop, h, sizeof(hop));
			sv->last_seen_ns = now;
			sv->packets += 1;
			sv->bytes += bytes;
			count(FW_CNT_SESSION_HIT);
			goto forward;
		}
	}

	struct bpf_fib_lookup f;
	count(FW_CNT_FIB_LOOKUP);
	int rc = fib(ctx, &p, &f, p.tot_len);
	int frag_needed = 0;
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		break;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		/* Local delivery, broadcast, multicast: the firewall's own traffic. */
		return pass(FW_CNT_PASS_LOCAL);
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return pass(FW_CNT_PASS_FWD_DISABLED);
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		/* The MTU check fails before the FIB names the egress; look up again
		 * without it so policy still decides before the kernel fragments or
		 * answers "too big". */
		frag_needed = 1;
		count(FW_CNT_FIB_LOOKUP);
		rc = fib(ctx, &p, &f, 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
			return drop(FW_CNT_DROP_NO_ROUTE);
		break;
	case BPF_FIB_LKUP_RET_UNSUPP_LWT:
		return drop(FW_CNT_DROP_UNSUPPORTED_ROUTE);
	default:
		return drop(FW_CNT_DROP_NO_ROUTE);
	}

	if (p.nonfirst_frag)
		return drop(FW_CNT_DROP_FRAGMENT);

	/* Only a complete answer is worth reusing: without a neighbour the
	 * kernel must see the packet, and an oversized packet must too. */
	int cacheable = rc == BPF_FIB_LKUP_RET_SUCCESS && !frag_needed;
	hop.checked_ns = cacheable ? now : 0;
	hop.ifindex = f.ifindex;
	__builtin_memcpy(hop.smac, f.smac, ETH_ALEN);
	__builtin_memcpy(hop.dmac, f.dmac, ETH_ALEN);

	if (live) {
		sv->last_seen_ns = now;
		sv->packets += 1;
		sv->bytes += bytes;
		__builtin_memcpy(&sv->hop[dir & 1], &hop, sizeof(hop));
		count(FW_CNT_SESSION_HIT);
	} else {
		if (sv)
			count(FW_CNT_SESSION_EXPIRED);
		/* Zones are only needed for a new flow. */
		struct fw_if_key ik = {.ifindex = ctx->ingress_ifindex, .slot = slot};
		__u32 *from = bpf_map_lookup_elem(&fw_if_zone, &ik);
		if (!from)
			/* Not (or no longer) managed: behave as if detached. */
			return pass(FW_CNT_PASS_UNMANAGED);
		struct fw_if_key ek = {.ifindex = f.ifindex, .slot = slot};
		__u32 *to = bpf_map_lookup_elem(&fw_if_zone, &ek);
		if (!to)
			/* Routing into an interface we do not manage would bypass the
			 * zone policy: fail closed. */
			return drop(FW_CNT_DROP_EGRESS_UNMANAGED);
		if (evaluate(slot, *from, *to, &p) != FW_ALLOW) {
			if (sv)
				/* Expired and now denied: free the slot so the session
				 * count stays the number of live flows. */
				bpf_map_delete_elem(smap, key);
			return drop(FW_CNT_DROP_POLICY);
		}
		struct fw_sess_val nv = {
			.created_ns = now,
			.last_seen_ns = now,
			.packets = 1,
			.bytes = bytes,
			.initiator_is_lo = src_is_lo,
		};
		__builtin_memcpy(&nv.hop[dir & 1], &hop, sizeof(hop));
		bpf_map_update_elem(smap, key, &nv, BPF_ANY);
		count(p.family == 4 ? FW_CNT_SESSION_CREATED_V4 : FW_CNT_SESSION_CREATED_V6);
	}

	if (frag_needed)
		return pass(FW_CNT_PASS_FRAG_NEEDED);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return pass(FW_CNT_PASS_NO_NEIGH);

forward:
	if (p.ttl <= 1)
		return pass(FW_CNT_PASS_TTL);

	/* Re-derive header pointers: the verifier forgets packet bounds across
	 * the helper calls above. */
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	__u32 l3off = sizeof(struct ethhdr) + (p.vlan ? sizeof(struct vlan_hdr_) : 0);
	if (p.family == 4) {
		struct iphdr *iph = data + l3off;
		if ((void *)(iph + 1) > end)
			return drop(FW_CNT_DROP_PARSE);
		ipv4_dec_ttl(iph);
	} else {
		struct ipv6hdr *ip6 = data + l3off;
		if ((void *)(ip6 + 1) > end)
			return drop(FW_CNT_DROP_PARSE);
		ip6->hop_limit--;
	}

	if (p.vlan) {
		/* Egress is the FIB's device, untagged: drop the tag by moving the
		 * start of the frame forward and writing a fresh Ethernet header. */
		if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct vlan_hdr_)))
			return drop(FW_CNT_DROP_PARSE);
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
	}
	eth = data;
	if ((void *)(eth + 1) > end)
		return drop(FW_CNT_DROP_PARSE);
	__builtin_memcpy(eth->h_dest, hop.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, hop.smac, ETH_ALEN);
	eth->h_proto = p.family == 4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);

	int act = bpf_redirect_map(&fw_tx_ports, hop.ifindex, XDP_DROP);
	if (act != XDP_REDIRECT)
		return drop(FW_CNT_DROP_EGRESS_UNMANAGED);
	count(FW_CNT_FORWARDED);
	return act;
}
