//go:build ignore

/* fwplane's eBPF datapath: a stateful zone firewall, one implementation
 * compiled into two program types that share every map:
 *
 *   xdp_fw   XDP, attached to interfaces where frames survive XDP and it
 *            wins (native drivers; see capability: the gate decides per
 *            interface and says why);
 *   tc_fw    TC (clsact ingress, attached with tcx), for interfaces whose
 *            traffic needs the skb: offloaded (partial) checksums, GSO/GRO
 *            aggregates, veth peers without NAPI, MTUs above what
 *            single-buffer XDP handles.
 *
 * The logic lives in __always_inline functions taking the context as
 * void * and a constant `tc`; each entry point instantiates them, the
 * compiler folds every `tc ?` away, and the verifier sees only accesses
 * valid for its program type. Sessions, flow cache, policy slots, counters
 * and mirror rules are the same maps for both, so a flow may enter on an
 * XDP interface and answer on a TC one.
 *
 * Per packet, first the fast path: an untagged IPv4/IPv6 TCP/UDP packet whose
 * flow is in this CPU's flow cache (fw_flow_cache, filled below for live
 * sessions only) is forwarded from the headers and the entry alone.
 *
 * Otherwise (fw_decide): parse (Ethernet, one 802.1Q tag, IPv4/IPv6,
 * TCP/UDP/ICMP echo, ICMP errors with their quoted packet) -> hand non-IP
 * and neighbour discovery to the kernel -> session lookup (canonical
 * 5-tuple, both directions hit); an established flow whose session holds a
 * fresh FIB answer for its direction is forwarded at once. Otherwise: ask
 * the kernel's FIB where the packet goes -> pass what is addressed to the
 * firewall itself -> on a session miss, the first matching rule of the
 * (ingress zone, egress zone) pair decides, no match denies (an ICMP error
 * instead passes only if it quotes a live session) -> remember the answer
 * in the flow cache. Then (fw_forward): decrement TTL, rewrite L2, redirect
 * (XDP: a devmap; TC: bpf_redirect, which keeps the skb's checksum state
 * and GSO size).
 *
 * Egress comes from bpf_fib_lookup, i.e. the kernel's routing and neighbour
 * tables in the firewall's namespace. That is deliberate: the operator's routes
 * and the kernel's ARP/ND are authoritative, so there is no second table to
 * keep in sync and no way for the two to disagree for longer than the
 * session's FIB cache (FW_FIB_CACHE_NS). When the kernel has no neighbour
 * entry yet we pass the (already allowed) packet up so the kernel resolves it
 * and forwards this one packet itself.
 *
 * Port mirroring wraps all of this. XDP (mirror_begin/mirror_end): a sampled
 * frame of a mirrored ingress keeps its first 32 bytes as XDP metadata and
 * is forwarded through a broadcast devmap of (egress, mirror output), whose
 * output entry runs xdp_fw_mirror to restore the frame as received; a
 * dropped frame goes to the output alone. TC: the decision is made without
 * touching the packet, so a selected frame is cloned as received with
 * bpf_clone_redirect before it is rewritten or dropped. See
 * ebpfbackend/doc.go. */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
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
	__type(value, struct fw_if_val);
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

/* Capacity is set by the control plane from tables.sessions before load.
 * Plain (preallocated) hash tables, not LRU: the session model decides what
 * leaves a full table (early drop of unassured sessions, never an assured
 * one), and the sweep removes what expired; an LRU would evict silently. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fw_sess4_key);
	__type(value, struct fw_sess_val);
} fw_sessions_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fw_sess6_key);
	__type(value, struct fw_sess_val);
} fw_sessions_v6 SEC(".maps");

/* Early-drop candidates (the control plane sizes the rings before load:
 * fw_settings.recent_mask + 1 entries). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct fw_sess4_key);
} fw_recent_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct fw_sess6_key);
} fw_recent_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_recent_pos);
} fw_recent_pos_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_sweep);
} fw_sweep_map SEC(".maps");

/* Keyed by egress ifindex: exactly the FIB's answer, no translation. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, FW_MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} fw_tx_ports SEC(".maps");

/* One element: every counter of a CPU, so a packet pays one lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_cpu_counters);
} fw_counters SEC(".maps");

/* Per-CPU and array-backed: the lookup is inlined and needs no hashing, where
 * an LRU session lookup hashes the key (jhash) in a helper call. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_FLOW_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_flow);
} fw_flow_cache SEC(".maps");

/* A generation per flow-cache slot, shared by every CPU: a SYN that
 * reopens a closed session's tuple bumps its slots, so the old
 * connection's entries on every CPU miss (they would forward the new
 * handshake's packets past the session's state tracking). Read on every
 * cache hit, written only on a reopen. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_FLOW_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} fw_flow_gen SEC(".maps");

/* Port mirroring. fw_mirror_on holds the number of rules: a non-mirroring
 * config costs one inlined array load per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fw_mirror_on SEC(".maps");

/* Keyed by ingress ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FW_MAX_MIRRORS);
	__type(key, __u32);
	__type(value, struct fw_mirror_cfg);
} fw_mirror_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_MAX_MIRRORS);
	__type(key, __u32);
	__type(value, struct fw_mirror_stats);
} fw_mirror_counts SEC(".maps");

/* Mirror outputs by ifindex, no devmap program: frames the firewall drops
 * are redirected here unchanged (their only copy is the mirror's). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, FW_MAX_MIRRORS);
	__type(key, __u32);
	__type(value, __u32);
} fw_mirror_out SEC(".maps");

/* One broadcast devmap per (egress, mirror output): key 0 the egress
 * (no program: the frame leaves as the firewall rewrote it), key 1 the
 * output with xdp_fw_mirror, which restores the received bytes from the
 * metadata. An array devmap, so egress and output may be the same device.
 * The kernel hands the clone to the first entry and the original to the
 * last. */
struct fw_bcast {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 2);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct fw_devmap_val));
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, FW_MAX_IFACES * 4);
	__type(key, struct fw_pair_key);
	__array(values, struct fw_bcast);
} fw_mirror_pairs SEC(".maps");

/* The mirror stage (see fw_common.h). Values as the kernel's struct
 * bpf_cpumap_val: queue size, then a program fd on update, its id on
 * lookup. */
struct fw_cpumap_val {
	__u32 qsize;
	__u32 prog;
};

struct {
	__uint(type, BPF_MAP_TYPE_CPUMAP);
	__uint(max_entries, FW_MAX_CPUS);
	__type(key, __u32);
	__type(value, struct fw_cpumap_val);
} fw_cpus SEC(".maps");

/* Receiving CPU -> its stage CPU + 1; 0: clones are made where the frame
 * arrived. Written by Go. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_MAX_CPUS);
	__type(key, __u32);
	__type(value, __u32);
} fw_stage_cpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_stage_prod);
} fw_stage_prod_map SEC(".maps");

/* Indexed by receiving CPU. Mmapable, so the values are page-aligned and
 * each 64-byte entry is a cache line of its own. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, FW_MAX_CPUS);
	__type(key, __u32);
	__type(value, struct fw_stage_done);
} fw_stage_done_map SEC(".maps");


/* NAT (see fw_common.h). Rules and pools per slot, written by Go. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_SLOTS * FW_MAX_NAT_RULES);
	__type(key, __u32);
	__type(value, struct fw_nat_rule);
} fw_snat_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_SLOTS * FW_MAX_NAT_RULES);
	__type(key, __u32);
	__type(value, struct fw_nat_rule);
} fw_dnat_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_SLOTS * FW_MAX_NAT_POOLS);
	__type(key, __u32);
	__type(value, struct fw_nat_pool);
} fw_nat_pools SEC(".maps");

/* Index: (slot * FW_MAX_NAT_POOLS + pool) * FW_MAX_POOL_ADDRS + i. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_SLOTS * FW_MAX_NAT_POOLS * FW_MAX_POOL_ADDRS);
	__type(key, __u32);
	__type(value, __u32);
} fw_nat_pool_addrs SEC(".maps");

/* Masquerade: {egress ifindex, slot | rule ordinal << 1} -> the pool of
 * that rule on that interface (its primary IPv4 address). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FW_SLOTS * FW_MAX_NAT_POOLS);
	__type(key, struct fw_if_key);
	__type(value, __u32);
} fw_nat_masq SEC(".maps");

/* Pool slots in use, each by one session (its key); sized by Go to the
 * session table: a session holds at most one slot. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fw_nat_port_key);
	__type(value, struct fw_sess4_key);
} fw_nat_ports SEC(".maps");

/* Reply tuple (as it arrives) -> session; sized like fw_nat_ports. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fw_nat_rev_key);
	__type(value, struct fw_sess4_key);
} fw_nat_rev SEC(".maps");

/* The pool addresses of a slot ({address, slot}), value 1: so a packet to
 * one that has no session is recognised (counted, and dropped unless the
 * address is the firewall's own). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FW_SLOTS * FW_MAX_NAT_POOLS * FW_MAX_POOL_ADDRS);
	__type(key, struct fw_if_key);
	__type(value, __u32);
} fw_nat_addrs SEC(".maps");

/* Slots taken and given back per pool address (network order) and CPU.
 * Go creates the entries of the running config's addresses at Apply, and
 * removes those of addresses no config uses once they hold nothing. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, FW_SLOTS * FW_MAX_NAT_POOLS * FW_MAX_POOL_ADDRS);
	__type(key, __u32);
	__type(value, struct fw_nat_addr_stats);
} fw_nat_addr_counts SEC(".maps");


/* What the mirror decided for this packet. */
struct mstate {
	__u32 out;     /* output ifindex; 0: not cloning this packet */
	__u32 idx;     /* stats index */
	__u32 len;     /* frame length as received */
	__u8 cloned;   /* forwarded through a broadcast devmap */
	__u8 modified; /* the frame was rewritten (TTL, MACs) */
	__u8 pad[2];
};

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

/* The flow-cache key comes first, so the parsed packet is its own key. */
struct pkt {
	struct fw_flow_key k; /* addresses, ports, protocol, family (4 or 6) */
	__u8 nonfirst_frag;
	__u8 vlan;
	__u8 ttl;
	__u8 tos;
	/* IP length the MTU checks use: the packet's, or for a TC GSO packet
	 * one segment's; 0 when unknown (then the FIB helper checks the skb
	 * itself and the answer is not cached). */
	__u16 tot_len;
	__be32 flowinfo;
	__u16 l4off;   /* ICMP errors: offset of the ICMP header in the frame */
	__u8 icmp_err; /* an ICMP error: the flow is the quoted packet's */
	__u8 src_is_lo; /* set by session_key */
	__u8 l4hlen;   /* TCP/UDP header length, for GSO segment sizes */
	__u8 tcp_flags; /* TCP: the flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	/* NAT (IPv4): xlate 1 rewrites the packet to the o_* tuple; 2 is an
	 * ICMP error about a translated flow whose outer addresses become
	 * o_saddr/o_daddr and whose quoted packet becomes the q_* tuple. k is
	 * then the flow in the untranslated world (what sessions, zones and
	 * the policy see) and wire the packet's own tuple (the flow cache's
	 * key). */
	__u8 xlate;
	__u8 dnat;     /* a new flow's destination was translated */
	__u8 related;  /* an ICMP error about a live flow (icmp_related) */
	__u32 o_saddr;
	__u32 o_daddr;
	__u16 o_sport;
	__u16 o_dport;
	__u32 q_saddr;
	__u32 q_daddr;
	__u16 q_sport;
	__u16 q_dport;
	struct fw_flow_key wire;
};

/* Per-CPU working memory of the general path: the parsed packet, a
 * quoted one and a new session's value. Off the 512-byte stack, and map
 * memory, whose contents the verifier does not follow: fewer states. A
 * program runs to completion on its CPU before the next one starts there. */
struct fw_scratch {
	struct pkt p;
	struct pkt q;
	struct fw_sess_val nv;
	struct fw_sess4_key k4; /* the session key of p */
	struct fw_sess6_key k6;
	struct fw_hop hop;      /* where p goes */
};

/* fw_out lives in fw_scratch2: the decision's output, read by the
 * forwarding step (the stack is full). */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_scratch);
} fw_scratch_map SEC(".maps");

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
/* Flags that change a session's state: such packets never take a cache. */
#define TCP_CTL (TCP_FIN | TCP_SYN | TCP_RST)

/* Verdicts inside the program, whatever its type; the entry points turn
 * them into XDP or TC return codes. */
enum fw_verdict {
	FWV_DROP = 0,
	FWV_PASS,  /* to the kernel's stack */
	FWV_FWD,   /* rewrite and redirect: see struct fw_out */
	FWV_ABORT, /* a map the program needs is missing: a bug */
	FWV_PASS_NAT, /* to the kernel's stack, translated first (struct fw_out) */
};

/* Where a forwarded packet goes, decided without touching the packet (TC
 * clones a mirrored frame as received after the decision). */
struct fw_out {
	__u32 ifindex;
	__u8 smac[6];
	__u8 dmac[6];
	__u8 family;
	__u8 vlan;  /* the frame carries an 802.1Q tag in its data */
	__u8 xlate; /* NAT: as struct pkt's */
	__u8 neigh; /* TC: the next hop is unresolved; bpf_redirect_neigh */
	__u32 saddr; /* xlate: the addresses (and ports) the packet leaves with */
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 q_saddr; /* xlate 2: the quoted packet's */
	__u32 q_daddr;
	__u16 q_sport;
	__u16 q_dport;
};

struct fw_scratch2 {
	struct fw_out o;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_scratch2);
} fw_scratch_out SEC(".maps");

/* The context seen through the program type; `tc` is a constant in every
 * instantiation, so only one branch is ever compiled in. */
static __always_inline void *ctx_data(void *ctx, const int tc)
{
	if (tc)
		return (void *)(long)((struct __sk_buff *)ctx)->data;
	return (void *)(long)((struct xdp_md *)ctx)->data;
}

static __always_inline void *ctx_end(void *ctx, const int tc)
{
	if (tc)
		return (void *)(long)((struct __sk_buff *)ctx)->data_end;
	return (void *)(long)((struct xdp_md *)ctx)->data_end;
}

static __always_inline __u32 ctx_ingress(void *ctx, const int tc)
{
	if (tc)
		return ((struct __sk_buff *)ctx)->ingress_ifindex;
	return ((struct xdp_md *)ctx)->ingress_ifindex;
}

/* Bytes of the packet: a TC skb may hold most of them outside its linear
 * part (GSO), so its length is skb->len. */
static __always_inline __u64 ctx_len(void *ctx, const int tc)
{
	if (tc)
		return ((struct __sk_buff *)ctx)->len;
	return (__u64)((long)ctx_end(ctx, 0) - (long)ctx_data(ctx, 0));
}

/* TC: the payload size of one GSO segment, 0 for a plain packet. */
static __always_inline __u32 ctx_gso_size(void *ctx, const int tc)
{
	if (tc)
		return ((struct __sk_buff *)ctx)->gso_size;
	return 0;
}

static __always_inline int native(int v, const int tc)
{
	switch (v) {
	case FWV_PASS:
		return tc ? TC_ACT_OK : XDP_PASS;
	case FWV_DROP:
		return tc ? TC_ACT_SHOT : XDP_DROP;
	}
	return tc ? TC_ACT_SHOT : XDP_ABORTED;
}

static __always_inline int pass(struct fw_cpu_counters *cnt, __u32 reason)
{
	cnt->c[reason] += 1;
	return FWV_PASS;
}

static __always_inline int drop(struct fw_cpu_counters *cnt, __u32 reason)
{
	cnt->c[reason] += 1;
	return FWV_DROP;
}

/* ICMP error types whose quoted header names the flow they are about:
 * destination unreachable (including fragmentation needed), time exceeded,
 * parameter problem; for ICMPv6 also packet too big. */
static __always_inline int icmp_is_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}
/* Parses the packet quoted by an ICMP error (the original packet, as its
 * sender sent it) into q: addresses, protocol and ports, or the echo id
 * for a quoted echo. Returns 0, or -1 when the quote is too short or names
 * nothing a session can be about (a quoted error, a later fragment). */
static __always_inline int parse_quote(void *in, void *end, __u8 family, struct pkt *q)
{
	void *l4;
	if (family == 4) {
		struct iphdr *iph = in;
		if ((void *)(iph + 1) > end)
			return -1;
		__u32 hlen = (iph->ihl & 0xf) * 4;
		if (iph->version != 4 || hlen < sizeof(*iph) || (iph->frag_off & bpf_htons(0x1fff)))
			return -1;
		q->k.family = 4;
		q->k.proto = iph->protocol;
		q->k.saddr[0] = iph->saddr;
		q->k.daddr[0] = iph->daddr;
		l4 = in + hlen;
	} else {
		struct ipv6hdr *ip6 = in;
		if ((void *)(ip6 + 1) > end)
			return -1;
		if (ip6->version != 6)
			return -1;
		q->k.family = 6;
		q->k.proto = ip6->nexthdr;
		__builtin_memcpy(q->k.saddr, &ip6->saddr, 16);
		__builtin_memcpy(q->k.daddr, &ip6->daddr, 16);
		l4 = ip6 + 1;
	}
	switch (q->k.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP: {
		/* Only the first 8 bytes of L4 are sure to be quoted: ports. */
		__be16 *ports = l4;
		if ((void *)(ports + 2) > end)
			return -1;
		q->k.sport = ports[0];
		q->k.dport = ports[1];
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct icmp_echo_ *ih = l4;
		if ((void *)(ih + 1) > end)
			return -1;
		if (!((q->k.proto == IPPROTO_ICMP && (ih->type == ICMP_ECHO_ || ih->type == ICMP_ECHOREPLY_)) ||
		      (q->k.proto == IPPROTO_ICMPV6 &&
		       (ih->type == ICMPV6_ECHO_REQUEST_ || ih->type == ICMPV6_ECHO_REPLY_))))
			return -1;
		q->k.sport = ih->id;
		q->k.dport = ih->id;
		return 0;
	}
	}
	return 0;
}

/* Reads ports (or the ICMP echo id, which plays both ports so that request
 * and reply build the same key) from the L4 header at l4. Returns 0, or -1
 * when the header is truncated. Sets *nd for IPv6 neighbour discovery, and
 * p->icmp_err for an ICMP error (whose quote icmp_related reads later). */
static __always_inline int parse_l4(void *l4, void *data, void *end, struct pkt *p, int *nd)
{
	switch (p->k.proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return -1;
		p->k.sport = th->source;
		p->k.dport = th->dest;
		p->l4hlen = th->doff * 4;
		p->tcp_flags = ((__u8 *)th)[13];
		return 0;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return -1;
		p->k.sport = uh->source;
		p->k.dport = uh->dest;
		p->l4hlen = sizeof(*uh);
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct icmp_echo_ *ih = l4;
		if ((void *)(ih + 1) > end)
			return -1;
		if (p->k.proto == IPPROTO_ICMPV6 && ih->type >= 133 && ih->type <= 137)
			*nd = 1;
		if ((p->k.proto == IPPROTO_ICMP && (ih->type == ICMP_ECHO_ || ih->type == ICMP_ECHOREPLY_)) ||
		    (p->k.proto == IPPROTO_ICMPV6 &&
		     (ih->type == ICMPV6_ECHO_REQUEST_ || ih->type == ICMPV6_ECHO_REPLY_))) {
			p->k.sport = ih->id;
			p->k.dport = ih->id;
		} else if (icmp_is_error(p->k.proto, ih->type)) {
			p->icmp_err = 1;
			p->l4off = (__u16)(l4 - data);
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

/* The session model (dataplane/session.go): a session's state follows from
 * its flags, which only ever gain bits. */
static __always_inline __u32 sess_state(__u8 proto, __u32 f)
{
	if (proto != IPPROTO_TCP)
		return (f & FW_SF_REPLY) ? FW_ST_REPLIED : FW_ST_UNREPLIED;
	if ((f & FW_SF_RST) || ((f & FW_SF_FIN_INIT) && (f & FW_SF_FIN_RESP)))
		return FW_ST_CLOSED;
	if (f & (FW_SF_FIN_INIT | FW_SF_FIN_RESP))
		return FW_ST_CLOSING;
	if (f & FW_SF_ESTABLISHED)
		return FW_ST_ESTABLISHED;
	return FW_ST_OPENING;
}

/* Assured: traffic seen both ways (TCP: and the handshake completed). An
 * assured session is never evicted for a new flow. */
static __always_inline int sess_assured(__u8 proto, __u32 f)
{
	if (proto == IPPROTO_TCP)
		return (f & FW_SF_ASSURED) != 0;
	return (f & FW_SF_REPLY) != 0;
}

static __always_inline __u32 timeout_slot(__u8 proto, __u32 state)
{
	switch (proto_class(proto)) {
	case FW_PC_TCP:
		switch (state) {
		case FW_ST_OPENING:
			return FW_TO_TCP_OPENING;
		case FW_ST_CLOSING:
			return FW_TO_TCP_CLOSING;
		case FW_ST_CLOSED:
			return FW_TO_TCP_CLOSED;
		}
		return FW_TO_TCP_ESTABLISHED;
	case FW_PC_UDP:
		return state == FW_ST_UNREPLIED ? FW_TO_UDP_UNREPLIED : FW_TO_UDP_REPLIED;
	case FW_PC_ICMP:
		return state == FW_ST_UNREPLIED ? FW_TO_ICMP_UNREPLIED : FW_TO_ICMP_REPLIED;
	}
	return state == FW_ST_UNREPLIED ? FW_TO_OTHER_UNREPLIED : FW_TO_OTHER_REPLIED;
}

/* Whether early aging is on for a family (the sweep switches it, and a
 * full table too). */
static __always_inline int aging_on(__u8 family)
{
	__u32 zero = 0;
	struct fw_sweep *sw = bpf_map_lookup_elem(&fw_sweep_map, &zero);
	return sw && sw->aging[family == 4 ? 0 : 1];
}

/* How long a flow-cache entry of a session in this state may forward
 * before the session is touched again (the control plane's fraction of the
 * state's timeout). Loaded at once, so no path carries a constant slot
 * index further (which would keep the verifier from merging paths). */
static __always_inline __u64 sess_refresh(const struct fw_settings *set, __u8 proto, __u32 flags)
{
	__u32 i = timeout_slot(proto, sess_state(proto, flags));
	if (i >= FW_TO_MAX)
		i = 0;
	return set->refresh_ns[i];
}

/* The idle timeout of a session: its state's, divided while early aging
 * is on if the state is unassured (TCP opening, unreplied). */
static __always_inline __u64 sess_timeout(const struct fw_settings *set, __u8 proto, __u32 flags, int aging)
{
	__u32 st = sess_state(proto, flags);
	__u32 i = timeout_slot(proto, st);
	if (i >= FW_TO_MAX) /* for the verifier */
		i = 0;
	__u64 to = set->timeout_ns[i];
	if (aging && (st == FW_ST_OPENING || st == FW_ST_UNREPLIED) && set->aging_div > 1)
		to /= set->aging_div;
	return to;
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
	if (r->family && r->family != p->k.family)
		return 0;
	if (r->proto && r->proto != p->k.proto)
		return 0;
	if (c->dport < r->port_lo || c->dport > r->port_hi)
		return 0;
	if (!prefix_match(p->k.saddr, r->src_addr, r->src_mask))
		return 0;
	if (!prefix_match(p->k.daddr, r->dst_addr, r->dst_mask))
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
		.dport = bpf_ntohs(p->k.dport),
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

static __always_inline void *session_key_of(const struct fw_flow_key *k, struct fw_sess4_key *k4,
					    struct fw_sess6_key *k6, __u8 *src_is_lo)
{
	int lo = endpoint_less(k->saddr, k->sport, k->daddr, k->dport);
	*src_is_lo = lo;
	if (k->family == 4) {
		__builtin_memset(k4, 0, sizeof(*k4));
		k4->lo_addr = lo ? k->saddr[0] : k->daddr[0];
		k4->hi_addr = lo ? k->daddr[0] : k->saddr[0];
		k4->lo_port = lo ? k->sport : k->dport;
		k4->hi_port = lo ? k->dport : k->sport;
		k4->proto = k->proto;
		return k4;
	}
	__builtin_memset(k6, 0, sizeof(*k6));
	for (int i = 0; i < 4; i++) {
		k6->lo_addr[i] = lo ? k->saddr[i] : k->daddr[i];
		k6->hi_addr[i] = lo ? k->daddr[i] : k->saddr[i];
	}
	k6->lo_port = lo ? k->sport : k->dport;
	k6->hi_port = lo ? k->dport : k->sport;
	k6->proto = k->proto;
	return k6;
}

static __always_inline void *session_key(struct pkt *p, struct fw_sess4_key *k4, struct fw_sess6_key *k6,
					 __u8 *src_is_lo)
{
	return session_key_of(&p->k, k4, k6, src_is_lo);
}

/* TTL is the high byte of its 16-bit word: decrementing it lowers the
 * header sum by 0x0100, so the checksum rises by the same with end-around
 * carry (RFC 1624; the kernel's ip_decrease_ttl does the same). */
static __always_inline void ipv4_dec_ttl(struct iphdr *iph)
{
	__u32 check = iph->check;
	check += bpf_htons(0x0100);
	iph->check = (__sum16)(check + (check >= 0xffff));
	iph->ttl--;
}

/* Asks the FIB and copies its answer (egress, MACs) into hop. Not inlined:
 * the 64-byte request lives in this frame, not in the main one. ctx is the
 * program's context (XDP or skb: the helper exists for both). tot_len 0
 * makes the skb variant check the skb itself against the egress MTU
 * (GSO-aware); the XDP variant then skips the check. */
static __noinline int fib_hop(void *ctx, __u32 ifindex, struct pkt *p, struct fw_hop *hop, __u16 tot_len)
{
	struct bpf_fib_lookup f;
	__builtin_memset(&f, 0, sizeof(f));
	f.ifindex = ifindex;
	f.l4_protocol = p->k.proto;
	f.sport = p->k.sport;
	f.dport = p->k.dport;
	f.tot_len = tot_len;
	if (p->k.family == 4) {
		f.family = AF_INET;
		f.tos = p->tos;
		f.ipv4_src = p->k.saddr[0];
		f.ipv4_dst = p->k.daddr[0];
		if (p->xlate) {
			/* NAT: the packet leaves with the o_* addresses (an ICMP
			 * error's outer ones), and is routed by them. */
			f.ipv4_src = p->o_saddr;
			f.ipv4_dst = p->o_daddr;
			if (p->xlate == 1) {
				f.sport = p->o_sport;
				f.dport = p->o_dport;
			}
		}
	} else {
		f.family = AF_INET6;
		f.flowinfo = p->flowinfo;
		for (int i = 0; i < 4; i++) {
			f.ipv6_src[i] = p->k.saddr[i];
			f.ipv6_dst[i] = p->k.daddr[i];
		}
	}
	int rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
	hop->ifindex = f.ifindex;
	__builtin_memcpy(hop->smac, f.smac, ETH_ALEN);
	__builtin_memcpy(hop->dmac, f.dmac, ETH_ALEN);
	return rc;
}

/* Multiplicative hash of the key's five 64-bit words; the top bits pick the
 * slot. Cheap, and good enough for a cache that tolerates collisions. */
static __always_inline __u32 flow_slot(const struct fw_flow_key *k)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = w[0] ^ (w[1] << 1) ^ (w[2] << 2) ^ (w[3] << 3) ^ (w[4] << 5);
	h *= 0x9e3779b97f4a7c15ULL;
	return (__u32)(h >> 52) & (FW_FLOW_CACHE_SLOTS - 1);
}

static __always_inline int flow_key_eq(const struct fw_flow_key *a, const struct fw_flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* Adds packets an evicted cache entry forwarded to their session, so that a
 * collision in the cache does not lose them from the session's totals. Not
 * inlined: it runs rarely, and its own stack frame keeps the main one
 * under the 512-byte limit. */
static __noinline void flush_evicted(struct fw_flow *fc)
{
	struct fw_sess4_key k4;
	struct fw_sess6_key k6;
	__u8 lo;
	session_key_of(&fc->key, &k4, &k6, &lo);
	struct fw_sess_val *sv;
	if (fc->key.family == 4) {
		sv = bpf_map_lookup_elem(&fw_sessions_v4, &k4);
		if (!sv && fc->xlate) {
			/* A translated flow's reply: its key is the reply tuple. */
			struct fw_nat_rev_key rk = {.saddr = fc->key.saddr[0], .daddr = fc->key.daddr[0],
						    .sport = fc->key.sport, .dport = fc->key.dport, .proto = fc->key.proto};
			struct fw_sess4_key *owner = bpf_map_lookup_elem(&fw_nat_rev, &rk);
			if (owner)
				sv = bpf_map_lookup_elem(&fw_sessions_v4, owner);
		}
	} else {
		sv = bpf_map_lookup_elem(&fw_sessions_v6, &k6);
	}
	if (sv) {
		sv->packets += fc->packets;
		sv->bytes += fc->bytes;
	}
}

/* ---- NAT (IPv4; dataplane/nat.go) ---- */

/* One's complement checksum updates (RFC 1624, eqn. 3): HC' = ~(~HC + ~m +
 * m'). Words as they sit in memory, which keeps every sum in the same
 * byte order. */
static __always_inline __u16 csum_fold32(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline void csum_repl16(__u16 *sum, __u16 old, __u16 new)
{
	__u32 s = (__u16)~*sum;
	s += (__u16)~old;
	s += new;
	*sum = (__u16)~csum_fold32(s);
}

static __always_inline void csum_repl32(__u16 *sum, __u32 old, __u32 new)
{
	csum_repl16(sum, (__u16)old, (__u16)new);
	csum_repl16(sum, (__u16)(old >> 16), (__u16)(new >> 16));
}

/* The initiator's original tuple of a v4 session. */
struct nat_view {
	__u32 isrc, idst;
	__u16 isp, idp;
	__u32 osrc, odst; /* what the initiator's packets leave with */
	__u16 osp, odp;
};

static __always_inline void nat_view_of(const struct fw_sess4_key *k, const struct fw_sess_val *v, struct nat_view *n)
{
	int lo = v->initiator_is_lo;
	n->isrc = lo ? k->lo_addr : k->hi_addr;
	n->idst = lo ? k->hi_addr : k->lo_addr;
	n->isp = lo ? k->lo_port : k->hi_port;
	n->idp = lo ? k->hi_port : k->lo_port;
	n->osrc = v->nat.saddr ? v->nat.saddr : n->isrc;
	n->osp = v->nat.saddr ? v->nat.sport : n->isp;
	n->odst = v->nat.daddr ? v->nat.daddr : n->idst;
	n->odp = v->nat.daddr ? v->nat.dport : n->idp;
	if (k->proto == IPPROTO_ICMP)
		n->odp = n->osp; /* the echo id plays both ports */
}

/* The key a reply of the session arrives with. */
static __always_inline void nat_rev_of(const struct nat_view *n, __u8 proto, struct fw_nat_rev_key *rk)
{
	__builtin_memset(rk, 0, sizeof(*rk));
	rk->saddr = n->odst;
	rk->daddr = n->osrc;
	rk->sport = n->odp;
	rk->dport = n->osp;
	rk->proto = proto;
}

static __always_inline int key4_eq(const struct fw_sess4_key *a, const struct fw_sess4_key *b)
{
	return a->lo_addr == b->lo_addr && a->hi_addr == b->hi_addr && a->lo_port == b->lo_port &&
	       a->hi_port == b->hi_port && a->proto == b->proto;
}

static __always_inline void nat_addr_count(__u32 addr, int alloc)
{
	struct fw_nat_addr_stats *st = bpf_map_lookup_elem(&fw_nat_addr_counts, &addr);
	if (!st) {
		struct fw_nat_addr_stats z = {};
		bpf_map_update_elem(&fw_nat_addr_counts, &addr, &z, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&fw_nat_addr_counts, &addr);
		if (!st)
			return;
	}
	if (alloc)
		st->alloc += 1;
	else
		st->free += 1;
}

/* Gives back what a translated v4 session held: its reverse entry and
 * its pool slot (each only if it is still this session's). A global
 * function: verified once, not at each of its callers' states. */
__noinline int nat_release(const struct fw_sess4_key *k, const struct fw_sess_val *v)
{
	if (!k || !v || (!v->nat.saddr && !v->nat.daddr))
		return 0;
	struct nat_view n;
	nat_view_of(k, v, &n);
	struct fw_nat_rev_key rk;
	nat_rev_of(&n, k->proto, &rk);
	struct fw_sess4_key *owner = bpf_map_lookup_elem(&fw_nat_rev, &rk);
	if (owner && key4_eq(owner, k))
		bpf_map_delete_elem(&fw_nat_rev, &rk);
	if (v->nat.saddr) {
		struct fw_nat_port_key pk = {.addr = v->nat.saddr, .port = v->nat.sport};
		owner = bpf_map_lookup_elem(&fw_nat_ports, &pk);
		if (owner && key4_eq(owner, k) && bpf_map_delete_elem(&fw_nat_ports, &pk) == 0)
			nat_addr_count(pk.addr, 0);
	}
	return 0;
}

/* Deletes a v4 session, and what it holds of NAT. */
static __always_inline void sess4_delete(void *key)
{
	struct fw_sess_val *v = bpf_map_lookup_elem(&fw_sessions_v4, key);
	if (v)
		nat_release(key, v);
	bpf_map_delete_elem(&fw_sessions_v4, key);
}

static __always_inline int nat_proto_ok(const struct pkt *p, __u8 want)
{
	__u8 pr = p->k.proto;
	if (want)
		return pr == want;
	return pr == IPPROTO_TCP || pr == IPPROTO_UDP || pr == IPPROTO_ICMP;
}

struct dnat_ctx {
	struct pkt *p;
	__u32 base;
	__u32 n;
	__u32 from;
	int hit;
};

static long dnat_rule(__u64 i, void *data)
{
	struct dnat_ctx *c = data;
	if (i >= c->n)
		return 1;
	__u32 idx = c->base + (__u32)i;
	struct fw_nat_rule *r = bpf_map_lookup_elem(&fw_dnat_rules, &idx);
	if (!r)
		return 1;
	struct pkt *p = c->p;
	if (r->from_zone && r->from_zone != c->from)
		return 0;
	if (!nat_proto_ok(p, r->proto) || p->k.daddr[0] != r->dst_addr)
		return 0;
	if ((p->k.saddr[0] & r->src_mask) != r->src_addr)
		return 0;
	int ported = p->k.proto == IPPROTO_TCP || p->k.proto == IPPROTO_UDP;
	if (ported) {
		__u16 dp = bpf_ntohs(p->k.dport);
		if (dp < r->port_lo || dp > r->port_hi)
			return 0;
	}
	p->o_saddr = p->k.saddr[0];
	p->o_sport = p->k.sport;
	p->o_daddr = r->to_addr;
	p->o_dport = (ported && r->to_port) ? bpf_htons(r->to_port) : p->k.dport;
	p->xlate = 1;
	p->dnat = r->rule ? r->rule : 0xff; /* nonzero: translated */
	c->hit = 1;
	return 1;
}

/* Destination NAT for the first packet of a new v4 flow (p->k as it
 * arrived, from zone `from`): the first matching rule sets the o_* tuple.
 * A global function: verified once, apart from the main path. */
__noinline int fw_dnat(struct pkt *p, __u32 slot, __u32 from)
{
	if (!p)
		return 0;
	struct fw_settings *set = bpf_map_lookup_elem(&fw_settings_map, &slot);
	if (!set || !set->dnat_n)
		return 0;
	struct dnat_ctx c = {.p = p, .base = (slot & 1) * FW_MAX_NAT_RULES, .n = set->dnat_n, .from = from};
	bpf_loop(FW_MAX_NAT_RULES, dnat_rule, &c, 0);
	return c.hit;
}

struct snat_ctx {
	struct pkt *p;
	__u32 base;
	__u32 n;
	__u32 from;
	__u32 to;
	__u32 pool;
	__u32 masq;
	__u32 rule;
	int hit; /* 1: a rule, -2: a rule, but not translatable */
};

static long snat_rule(__u64 i, void *data)
{
	struct snat_ctx *c = data;
	if (i >= c->n)
		return 1;
	__u32 idx = c->base + (__u32)i;
	struct fw_nat_rule *r = bpf_map_lookup_elem(&fw_snat_rules, &idx);
	if (!r)
		return 1;
	struct pkt *p = c->p;
	if (r->from_zone != c->from || r->to_zone != c->to)
		return 0;
	if ((p->k.saddr[0] & r->src_mask) != r->src_addr)
		return 0;
	if (r->proto && r->proto != p->k.proto)
		return 0;
	c->pool = r->pool;
	c->masq = r->masq;
	c->rule = r->rule;
	c->hit = nat_proto_ok(p, 0) ? 1 : -2;
	return 1;
}

struct alloc_ctx {
	struct fw_sess4_key owner;
	__u32 addr_base; /* index of the pool's first address */
	__u32 nports;
	__u32 port_lo;
	__u32 n;         /* slots in the pool */
	__u32 start;
	__u32 addr;      /* the slot taken */
	__u16 port;
	__u16 got;
};

/* One probe of the pool: slot (start + i) mod n. Returns 1 to stop. */
static long alloc_probe(__u64 i, void *data)
{
	struct alloc_ctx *c = data;
	if (!c->n || !c->nports)
		return 1;
	__u32 s = (c->start + (__u32)i) % c->n;
	__u32 ai = c->addr_base + s / c->nports;
	__u32 *addr = bpf_map_lookup_elem(&fw_nat_pool_addrs, &ai);
	if (!addr)
		return 1;
	struct fw_nat_port_key pk = {.addr = *addr, .port = bpf_htons((__u16)(c->port_lo + s % c->nports))};
	if (bpf_map_update_elem(&fw_nat_ports, &pk, &c->owner, BPF_NOEXIST) == 0) {
		nat_addr_count(pk.addr, 1);
	} else {
		/* Taken: reclaim it if its session is gone (a release that was
		 * missed is repaired here, and by the sweep). */
		struct fw_sess4_key *o = bpf_map_lookup_elem(&fw_nat_ports, &pk);
		if (!o || bpf_map_lookup_elem(&fw_sessions_v4, o))
			return 0;
		if (bpf_map_update_elem(&fw_nat_ports, &pk, &c->owner, BPF_EXIST))
			return 0;
		nat_addr_count(pk.addr, 0);
		nat_addr_count(pk.addr, 1);
	}
	c->addr = pk.addr;
	c->port = pk.port;
	c->got = 1;
	return 1;
}

/* Source NAT for an allowed new v4 flow from zone `from` routed to `to`:
 * the first matching rule's pool gives a free slot, which the session
 * (key4, canonical of p->k) will hold. Returns 0 (no rule), 1 | the
 * rule's fw_nat_rule.rule << 8 (o_* set), -1 (no free slot) or -2
 * (selected, not translatable). Global, as fw_dnat. */
__noinline int fw_snat(struct pkt *p, struct fw_sess4_key *key4, __u32 slot, __u32 zones, __u32 egress)
{
	if (!p || !key4)
		return 0;
	struct fw_settings *set = bpf_map_lookup_elem(&fw_settings_map, &slot);
	if (!set || !set->snat_n)
		return 0;
	__u32 sl = slot & 1;
	struct snat_ctx c = {.p = p, .base = sl * FW_MAX_NAT_RULES, .n = set->snat_n, .from = zones & 0xff, .to = (zones >> 8) & 0xff};
	bpf_loop(FW_MAX_NAT_RULES, snat_rule, &c, 0);
	if (c.hit <= 0)
		return c.hit;
	if (c.masq) {
		/* Keyed by the egress and the rule (its pool field is the
		 * rule's ordinal then): each masquerading rule has a pool per
		 * egress interface, of that interface's address and the rule's
		 * ports. */
		struct fw_if_key mk = {.ifindex = egress, .slot = sl | ((c.pool & (FW_MAX_NAT_RULES - 1)) << 1)};
		__u32 *mp = bpf_map_lookup_elem(&fw_nat_masq, &mk);
		if (!mp)
			return -1; /* an egress without an IPv4 address: nothing to masquerade to */
		c.pool = *mp;
	}
	__u32 pi = sl * FW_MAX_NAT_POOLS + (c.pool & (FW_MAX_NAT_POOLS - 1));
	struct fw_nat_pool *pool = bpf_map_lookup_elem(&fw_nat_pools, &pi);
	if (!pool || !pool->naddr || pool->port_hi < pool->port_lo)
		return -1;
	struct alloc_ctx a = {
		.addr_base = pi * FW_MAX_POOL_ADDRS,
		.nports = (__u32)pool->port_hi - pool->port_lo + 1,
		.port_lo = pool->port_lo,
	};
	__builtin_memcpy(&a.owner, key4, sizeof(a.owner));
	a.n = (pool->naddr & (FW_MAX_POOL_ADDRS * 2 - 1)) * a.nports;
	if (!a.n)
		return -1;
	a.start = bpf_get_prandom_u32() % a.n;
	/* Small pools are searched whole; large ones from a random start, for
	 * at most FW_NAT_PROBES slots: no linear scan of a big range. */
	bpf_loop(a.n < FW_NAT_PROBES ? a.n : FW_NAT_PROBES, alloc_probe, &a, 0);
	if (!a.got)
		return -1;
	if (!p->xlate) {
		p->o_daddr = p->k.daddr[0];
		p->o_dport = p->k.dport;
	}
	p->o_saddr = a.addr;
	p->o_sport = a.port;
	if (p->k.proto == IPPROTO_ICMP)
		p->o_dport = a.port; /* the echo id plays both ports */
	p->xlate = 1;
	return 1 | ((c.rule & 0xff) << 8);
}

/* Remembers a new session's key as an early-drop candidate. */
static __always_inline void recent_push(__u8 family, const void *key, const struct fw_settings *set)
{
	__u32 zero = 0;
	struct fw_recent_pos *pos = bpf_map_lookup_elem(&fw_recent_pos_map, &zero);
	if (!pos)
		return;
	__u32 f = family == 4 ? 0 : 1;
	__u32 idx = (__u32)(__sync_fetch_and_add(&pos->w[f], 1) & set->recent_mask);
	if (f == 0) {
		struct fw_sess4_key *slot = bpf_map_lookup_elem(&fw_recent_v4, &idx);
		if (slot)
			__builtin_memcpy(slot, key, sizeof(*slot));
	} else {
		struct fw_sess6_key *slot = bpf_map_lookup_elem(&fw_recent_v6, &idx);
		if (slot)
			__builtin_memcpy(slot, key, sizeof(*slot));
	}
}

struct early_drop_ctx {
	const struct fw_settings *set;
	struct fw_cpu_counters *cnt;
	struct fw_recent_pos *pos;
	__u64 now;
	__u64 w; /* the write position when the search began */
	__u32 v6;
	int aging;
	int freed;
};

/* One early-drop probe (bpf_loop: the callback is verified once rather
 * than once per unrolled probe and path): claims the oldest candidate
 * (an atomic add, so two CPUs never look at the same one). Returns 1 to
 * stop. */
static long early_drop_probe(__u64 i, void *data)
{
	struct early_drop_ctx *c = data;
	struct fw_recent_pos *pos = c->pos;
	__u32 f = c->v6 ? 1 : 0;
	__u64 r = __sync_fetch_and_add(&pos->r[f], 1);
	if (r >= c->w)
		return 1; /* none left (the position overshoots by a claim or two) */
	__u32 idx = (__u32)(r & c->set->recent_mask);
	struct fw_sess_val *sv;
	__u8 proto;
	void *k;
	if (f) {
		struct fw_sess6_key *k6 = bpf_map_lookup_elem(&fw_recent_v6, &idx);
		if (!k6)
			return 1;
		sv = bpf_map_lookup_elem(&fw_sessions_v6, k6);
		proto = k6->proto;
		k = k6;
	} else {
		struct fw_sess4_key *k4 = bpf_map_lookup_elem(&fw_recent_v4, &idx);
		if (!k4)
			return 1;
		sv = bpf_map_lookup_elem(&fw_sessions_v4, k4);
		proto = k4->proto;
		k = k4;
	}
	if (!sv)
		return 0; /* gone already */
	__u32 flags = sv->flags;
	int expired = c->now - sv->last_seen_ns > sess_timeout(c->set, proto, flags, c->aging);
	if (!expired && sess_assured(proto, flags))
		return 0; /* never evicted */
	/* (A translated session's pool slot and reverse entry are left to the
	 * sweep and to the next allocation, which both take back what no
	 * session holds: one call level less here, where the stack is full.) */
	long err = f ? bpf_map_delete_elem(&fw_sessions_v6, k) : bpf_map_delete_elem(&fw_sessions_v4, k);
	if (err)
		return 0;
	c->cnt->c[expired ? FW_CNT_SESSION_EXPIRED_EVICTED : FW_CNT_SESSION_EARLY_DROP] += 1;
	c->freed = 1;
	return 1;
}

/* A full table: looks at up to FW_EARLY_DROP_PROBES of the oldest recent
 * keys and deletes the first session that is expired or unassured
 * (counted). Assured, live sessions are skipped: never evicted. Returns
 * whether a slot was freed. */
static __always_inline int early_drop(__u8 family, const struct fw_settings *set, __u64 now,
				      struct fw_cpu_counters *cnt)
{
	__u32 zero = 0;
	struct fw_recent_pos *pos = bpf_map_lookup_elem(&fw_recent_pos_map, &zero);
	if (!pos)
		return 0;
	__u32 f = family == 4 ? 0 : 1;
	__u64 w = pos->w[f];
	if (pos->r[f] > w) /* claims overshoot by a few */
		pos->r[f] = w;
	/* Candidates older than the ring's size were overwritten. */
	if (w - pos->r[f] > set->recent_mask + 1)
		pos->r[f] = w - set->recent_mask - 1;
	if (pos->r[f] >= w)
		return 0;
	struct early_drop_ctx c = {
		.set = set, .cnt = cnt, .pos = pos, .now = now, .w = w, .v6 = f, .aging = aging_on(family),
	};
	bpf_loop(FW_EARLY_DROP_PROBES, early_drop_probe, &c, 0);
	return c.freed;
}

/* Whether an ICMP error is about a live session: the quoted packet's tuple
 * names the session (keys are canonical, so the quote's direction does not
 * matter) and the error travels back to the quoted packet's sender. The
 * quote of a translated flow's packet is its translated tuple: the session
 * is found through the reverse index, and p is set to translate the error
 * back (xlate 2: the outer addresses and the quoted packet become the
 * untranslated world's). Not inlined, like flush_evicted. */
static __noinline int icmp_related(void *data, void *end, struct pkt *p, const struct fw_settings *set,
				    __u64 now)
{
	__u32 zero = 0;
	struct fw_scratch *sc = bpf_map_lookup_elem(&fw_scratch_map, &zero);
	if (!sc)
		return 0;
	struct pkt *q = &sc->q;
	__builtin_memset(q, 0, sizeof(*q));
	/* l4off < 4096 for the verifier; the ICMP header is 8 bytes. */
	void *in = data + (p->l4off & 0xfff) + 8;
	if (parse_quote(in, end, p->k.family, q) < 0)
		return 0;
	if (((p->k.daddr[0] ^ q->k.saddr[0]) | (p->k.daddr[1] ^ q->k.saddr[1]) | (p->k.daddr[2] ^ q->k.saddr[2]) |
	     (p->k.daddr[3] ^ q->k.saddr[3])) != 0)
		return 0;
	struct fw_sess4_key k4;
	struct fw_sess6_key k6;
	__u8 lo;
	session_key(q, &k4, &k6, &lo);
	struct fw_sess_val *sv;
	if (q->k.family == 4)
		sv = bpf_map_lookup_elem(&fw_sessions_v4, &k4);
	else
		sv = bpf_map_lookup_elem(&fw_sessions_v6, &k6);
	if (!sv && q->k.family == 4) {
		/* The quote is a translated packet (the initiator's, as it left):
		 * its reply tuple is the quote reversed. */
		struct fw_nat_rev_key rk = {.saddr = q->k.daddr[0], .daddr = q->k.saddr[0], .sport = q->k.dport,
					    .dport = q->k.sport, .proto = q->k.proto};
		struct fw_sess4_key *owner = bpf_map_lookup_elem(&fw_nat_rev, &rk);
		if (!owner)
			return 0;
		__builtin_memcpy(&k4, owner, sizeof(k4));
		sv = bpf_map_lookup_elem(&fw_sessions_v4, &k4);
		if (!sv)
			return 0;
		struct nat_view n;
		nat_view_of(&k4, sv, &n);
		/* Outer: to the initiator's own address; from the untranslated
		 * destination when the translated one sent it. */
		p->o_daddr = n.isrc;
		p->o_saddr = p->k.saddr[0] == n.odst ? n.idst : p->k.saddr[0];
		p->q_saddr = n.isrc;
		p->q_daddr = n.idst;
		p->q_sport = n.isp;
		p->q_dport = n.idp;
		p->xlate = 2;
	}
	if (!sv)
		return 0;
	return now - sv->last_seen_ns <= sess_timeout(set, q->k.proto, sv->flags, aging_on(q->k.family));
}

/* The first packet of a v4 flow that has no session by its own tuple: a
 * reply of a translated flow arrives with its reply tuple, which the
 * reverse index maps to the session. Then p->k becomes the untranslated
 * world's reply (what the session, zones and policy see, and what the
 * packet leaves as: o_*), key_out the session's key, and 1 is returned. A
 * packet to a pool address with no session returns -1 (drop: it would be
 * routed somewhere) unless the address is the firewall's own (masquerade),
 * 0. Global, verified once. */
__noinline int fw_nat_reverse(struct pkt *p, struct fw_sess4_key *key_out, __u32 slot)
{
	if (!p || !key_out)
		return 0;
	struct fw_nat_rev_key rk = {.saddr = p->k.saddr[0], .daddr = p->k.daddr[0], .sport = p->k.sport,
				    .dport = p->k.dport, .proto = p->k.proto};
	struct fw_sess4_key *owner = bpf_map_lookup_elem(&fw_nat_rev, &rk);
	if (!owner) {
		struct fw_if_key ak = {.ifindex = p->k.daddr[0], .slot = slot & 1};
		__u32 *kind = bpf_map_lookup_elem(&fw_nat_addrs, &ak);
		if (!kind)
			return 0;
		__u32 zero = 0;
		struct fw_cpu_counters *cnt = bpf_map_lookup_elem(&fw_counters, &zero);
		if (cnt)
			cnt->c[FW_CNT_NAT_REVERSE_MISS] += 1;
		return *kind == 1 ? 0 : -1;
	}
	__builtin_memcpy(key_out, owner, sizeof(*key_out));
	struct fw_sess_val *sv = bpf_map_lookup_elem(&fw_sessions_v4, key_out);
	if (!sv)
		return 0;
	struct nat_view n;
	nat_view_of(key_out, sv, &n);
	p->k.saddr[0] = n.idst;
	p->k.daddr[0] = n.isrc;
	p->k.sport = n.idp;
	p->k.dport = n.isp;
	p->src_is_lo = !sv->initiator_is_lo;
	p->o_saddr = n.idst;
	p->o_daddr = n.isrc;
	p->o_sport = n.idp;
	p->o_dport = n.isp;
	p->xlate = 1;
	return 1;
}

/* A packet of a translated session (live, found by its own tuple): from
 * the initiator it leaves translated; from the responder only replies that
 * came through the reverse index are the session's (the untranslated reply
 * tuple from outside is not how a reply of a NAT flow arrives). Returns -1
 * to drop. */
static __always_inline int nat_from_session(struct pkt *p, const struct fw_sess_val *sv, int from_init)
{
	if (!sv->nat.saddr && !sv->nat.daddr)
		return 0;
	if (!from_init)
		return p->xlate ? 0 : -1;
	p->o_saddr = sv->nat.saddr ? sv->nat.saddr : p->k.saddr[0];
	p->o_sport = sv->nat.saddr ? sv->nat.sport : p->k.sport;
	p->o_daddr = sv->nat.daddr ? sv->nat.daddr : p->k.daddr[0];
	p->o_dport = sv->nat.daddr ? sv->nat.dport : p->k.dport;
	if (p->k.proto == IPPROTO_ICMP)
		p->o_dport = p->o_sport;
	p->xlate = 1;
	return 0;
}

#define E2BIG_ 7

/* What a new session starts with, besides the packet and its hop (BPF
 * functions take at most five arguments). */
struct fw_newsess {
	__u64 now;
	__u64 bytes;
	__u32 slot;
	__u32 flags;
	__u8 from_zone;
	__u8 to_zone;
	__u8 pad[6];
	struct fw_nat_xlate nat; /* a translated flow's (its pool slot is taken) */
};

/* Inserts the session of an allowed new flow under key (session_key's),
 * making room by early drop when the table is full. Returns 0, or -1 when
 * the flow cannot get a session (counted). Not inlined: the value is big,
 * and in its own frame it does not count against the main one. */
static __noinline int create_session(const struct pkt *p, void *key, const struct fw_hop *hop,
				     const struct fw_newsess *ns)
{
	__u32 zero = 0;
	struct fw_cpu_counters *cnt = bpf_map_lookup_elem(&fw_counters, &zero);
	__u32 slot = ns->slot;
	struct fw_settings *set = bpf_map_lookup_elem(&fw_settings_map, &slot);
	if (!cnt || !set)
		return -1;
	__u64 now = ns->now;
	struct fw_scratch *sc = bpf_map_lookup_elem(&fw_scratch_map, &zero);
	if (!sc)
		return -1;
	struct fw_sess_val *nv = &sc->nv;
	__builtin_memset(nv, 0, sizeof(*nv));
	nv->created_ns = now;
	nv->last_seen_ns = now;
	nv->packets = 1;
	nv->bytes = ns->bytes;
	nv->flags = ns->flags;
	nv->initiator_is_lo = p->src_is_lo;
	nv->from_zone = ns->from_zone;
	nv->to_zone = ns->to_zone;
	__builtin_memcpy(&nv->nat, &ns->nat, sizeof(nv->nat));
	int translated = ns->nat.saddr || ns->nat.daddr;
	if (p->src_is_lo)
		__builtin_memcpy(&nv->hop[0], hop, sizeof(*hop));
	else
		__builtin_memcpy(&nv->hop[1], hop, sizeof(*hop));
	for (int attempt = 0; attempt < 2; attempt++) {
		long err;
		if (p->k.family == 4)
			err = bpf_map_update_elem(&fw_sessions_v4, key, nv, BPF_ANY);
		else
			err = bpf_map_update_elem(&fw_sessions_v6, key, nv, BPF_ANY);
		if (err == 0) {
			if (translated) {
				/* Replies find the session through their own tuple. A
				 * reply tuple another session has is a clash: refused. */
				struct nat_view n;
				nat_view_of(key, nv, &n);
				struct fw_nat_rev_key rk;
				nat_rev_of(&n, p->k.proto, &rk);
				if (bpf_map_update_elem(&fw_nat_rev, &rk, key, BPF_NOEXIST)) {
					/* Taken: by a session that is gone (its entry not yet
					 * swept) it is ours; by a live one it is a clash. */
					struct fw_sess4_key *o = bpf_map_lookup_elem(&fw_nat_rev, &rk);
					if (!o || bpf_map_lookup_elem(&fw_sessions_v4, o) ||
					    bpf_map_update_elem(&fw_nat_rev, &rk, key, BPF_EXIST)) {
						sess4_delete(key);
						cnt->c[FW_CNT_NAT_EXHAUSTED] += 1;
						return -1;
					}
				}
				cnt->c[FW_CNT_NAT_CREATED] += 1;
			}
			recent_push(p->k.family, key, set);
			return 0;
		}
		if (err != -E2BIG_ || attempt)
			break;
		/* Full: age unassured sessions faster from now on (the sweep
		 * turns it off again), and make room if a candidate allows. */
		struct fw_sweep *sw = bpf_map_lookup_elem(&fw_sweep_map, &zero);
		if (sw)
			sw->aging[p->k.family == 4 ? 0 : 1] = 1;
		if (!early_drop(p->k.family, set, now, cnt))
			break;
	}
	cnt->c[FW_CNT_SESSION_TABLE_FULL] += 1;
	if (translated)
		nat_release(key, nv); /* the pool slot taken for it */
	return -1;
}

/* The fast path: an untagged IPv4 (no options) or IPv6 TCP/UDP packet whose
 * flow is in this CPU's cache is decided from the headers and the entry
 * alone, with no parse into a struct and no call, and forwarded straight
 * from the entry (fast_forward). Anything else, and any miss, takes the
 * general path below, which applies the same checks in full; this path
 * only forwards what that path would.
 *
 * Header words are read again after each map lookup rather than kept: clang
 * treats the (inlined) lookups as calls, and keeping the key live across
 * them costs more spills than the loads. */
#define RELOAD32(p) (*(volatile __u32 *)(p))

/* Whether fc may forward a packet of IP length len that arrived on in now:
 * same config flip, not expired, the interface the session's zones allow
 * for this direction, no bigger than what the FIB's MTU check accepted,
 * and, for XDP, an egress that takes XDP redirects. */
static __always_inline int fast_valid(const struct fw_flow *fc, __u32 idx, __u32 len, __u32 in, const int tc)
{
	__u32 zero = 0;
	__u32 *activep = bpf_map_lookup_elem(&fw_active, &zero);
	if (!activep)
		return 0;
	__u32 *gen = bpf_map_lookup_elem(&fw_flow_gen, &idx);
	if (!gen)
		return 0;
	return fc->active == *activep && fc->gen == *gen && (__s64)(fc->expire_j - bpf_jiffies64()) > 0 && len &&
	       len <= fc->len_ok && fc->in_ifindex == in && (tc || fc->xdp_tx);
}

/* Fills o from a flow-cache hit whose packet is translated: the general
 * forward does the rewrite. */
static __always_inline void fast_out(const struct fw_flow *fc, __u8 family, struct fw_out *o)
{
	o->ifindex = fc->ifindex;
	__builtin_memcpy(o->smac, fc->smac, ETH_ALEN);
	__builtin_memcpy(o->dmac, fc->dmac, ETH_ALEN);
	o->family = family;
	o->vlan = 0;
	o->neigh = 0;
	o->xlate = (__u8)fc->xlate;
	o->saddr = fc->nat_saddr;
	o->daddr = fc->nat_daddr;
	o->sport = fc->nat_sport;
	o->dport = fc->nat_dport;
}

/* The IP length the MTU check is about: for a TC GSO packet, one segment's
 * (headers + gso_size), else the packet's. */
static __always_inline __u32 seg_len(__u32 tot_len, __u32 l3l4hlen, __u32 gso)
{
	return gso ? l3l4hlen + gso : tot_len;
}

static __always_inline struct fw_flow *fast4(void *ctx, const int tc, struct ethhdr *eth, void *end)
{
	struct iphdr *iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > end)
		return NULL;
	/* Version 4, no options, not a later fragment, TTL left to spend. */
	if (*(__u8 *)iph != 0x45 || (iph->frag_off & bpf_htons(0x1fff)) || iph->ttl <= 1)
		return NULL;
	__u8 proto = iph->protocol;
	__u32 *l4 = (void *)(iph + 1);
	__u32 hlen;
	if (proto == IPPROTO_UDP) {
		if ((void *)l4 + sizeof(struct udphdr) > end)
			return NULL;
		hlen = sizeof(struct iphdr) + sizeof(struct udphdr);
	} else if (proto == IPPROTO_TCP) {
		if ((void *)l4 + sizeof(struct tcphdr) > end)
			return NULL;
		if (((__u8 *)l4)[13] & TCP_CTL) /* may change the session's state */
			return NULL;
		hlen = sizeof(struct iphdr) + ((struct tcphdr *)l4)->doff * 4;
	} else {
		return NULL;
	}
	if (bpf_ntohs(iph->tot_len) < sizeof(*iph))
		return NULL;
	/* The words of struct fw_flow_key for IPv4: 1 and 3 are zero. */
	__u64 w4 = *l4 | ((__u64)proto << 32) | (4ULL << 40);
	__u64 h = (__u64)iph->saddr ^ ((__u64)iph->daddr << 2) ^ (w4 << 5);
	__u32 idx = (__u32)((h * 0x9e3779b97f4a7c15ULL) >> 52) & (FW_FLOW_CACHE_SLOTS - 1);
	struct fw_flow *fc = bpf_map_lookup_elem(&fw_flow_cache, &idx);
	if (!fc)
		return NULL;
	const __u64 *k = (const __u64 *)&fc->key;
	w4 = RELOAD32(l4) | ((__u64)iph->protocol << 32) | (4ULL << 40);
	if (((k[0] ^ RELOAD32(&iph->saddr)) | k[1] | (k[2] ^ RELOAD32(&iph->daddr)) | k[3] | (k[4] ^ w4)) != 0)
		return NULL;
	if (!fast_valid(fc, idx, seg_len(bpf_ntohs(iph->tot_len), hlen, ctx_gso_size(ctx, tc)), ctx_ingress(ctx, tc), tc))
		return NULL;
	return fc;
}

static __always_inline __u64 addr_word(const struct in6_addr *a, int i)
{
	return (__u64)RELOAD32(&a->in6_u.u6_addr32[2 * i]) | ((__u64)RELOAD32(&a->in6_u.u6_addr32[2 * i + 1]) << 32);
}

static __always_inline struct fw_flow *fast6(void *ctx, const int tc, struct ethhdr *eth, void *end)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > end)
		return NULL;
	if (ip6->version != 6 || ip6->hop_limit <= 1)
		return NULL;
	__u8 proto = ip6->nexthdr;
	__u32 *l4 = (void *)(ip6 + 1);
	__u32 hlen;
	if (proto == IPPROTO_UDP) {
		if ((void *)l4 + sizeof(struct udphdr) > end)
			return NULL;
		hlen = sizeof(struct ipv6hdr) + sizeof(struct udphdr);
	} else if (proto == IPPROTO_TCP) {
		if ((void *)l4 + sizeof(struct tcphdr) > end)
			return NULL;
		if (((__u8 *)l4)[13] & TCP_CTL)
			return NULL;
		hlen = sizeof(struct ipv6hdr) + ((struct tcphdr *)l4)->doff * 4;
	} else {
		return NULL;
	}
	__u64 w4 = *l4 | ((__u64)proto << 32) | (6ULL << 40);
	__u64 h = addr_word(&ip6->saddr, 0) ^ (addr_word(&ip6->saddr, 1) << 1) ^ (addr_word(&ip6->daddr, 0) << 2) ^
		  (addr_word(&ip6->daddr, 1) << 3) ^ (w4 << 5);
	__u32 idx = (__u32)((h * 0x9e3779b97f4a7c15ULL) >> 52) & (FW_FLOW_CACHE_SLOTS - 1);
	struct fw_flow *fc = bpf_map_lookup_elem(&fw_flow_cache, &idx);
	if (!fc)
		return NULL;
	const __u64 *k = (const __u64 *)&fc->key;
	w4 = RELOAD32(l4) | ((__u64)ip6->nexthdr << 32) | (6ULL << 40);
	if (((k[0] ^ addr_word(&ip6->saddr, 0)) | (k[1] ^ addr_word(&ip6->saddr, 1)) |
	     (k[2] ^ addr_word(&ip6->daddr, 0)) | (k[3] ^ addr_word(&ip6->daddr, 1)) | (k[4] ^ w4)) != 0)
		return NULL;
	if (!fast_valid(fc, idx, seg_len(bpf_ntohs(ip6->payload_len) + sizeof(*ip6), hlen, ctx_gso_size(ctx, tc)), ctx_ingress(ctx, tc), tc))
		return NULL;
	return fc;
}

/* The flow-cache entry that may forward this packet (see fast_valid), and
 * the packet's family in *family; NULL takes the general path. */
static __always_inline struct fw_flow *fast_path(void *ctx, const int tc, __u8 *family)
{
	void *data = ctx_data(ctx, tc);
	void *end = ctx_end(ctx, tc);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return NULL;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		*family = 4;
		return fast4(ctx, tc, eth, end);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		*family = 6;
		return fast6(ctx, tc, eth, end);
	}
	return NULL;
}

/* Parses the frame into p. Returns -1 to go on, or a verdict (counted). */
static __always_inline int fw_parse_body(void *ctx, const int tc, struct pkt *p)
{
	__u32 zero = 0;
	struct fw_cpu_counters *cnt = bpf_map_lookup_elem(&fw_counters, &zero);
	if (!cnt)
		return FWV_ABORT;
	void *data = ctx_data(ctx, tc);
	void *end = ctx_end(ctx, tc);
	int nd = 0;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return drop(cnt, FW_CNT_DROP_PARSE);
	__be16 h_proto = eth->h_proto;
	void *l3 = eth + 1;
	if (h_proto == bpf_htons(ETH_P_8021Q_)) {
		struct vlan_hdr_ *vh = l3;
		if ((void *)(vh + 1) > end)
			return drop(cnt, FW_CNT_DROP_PARSE);
		h_proto = vh->proto;
		l3 = vh + 1;
		p->vlan = 1;
	}

	__u32 l3hlen;
	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = l3;
		if ((void *)(iph + 1) > end)
			return drop(cnt, FW_CNT_DROP_PARSE);
		__u32 hlen = iph->ihl * 4;
		if (iph->version != 4 || hlen < sizeof(*iph) || bpf_ntohs(iph->tot_len) < hlen)
			return drop(cnt, FW_CNT_DROP_PARSE);
		if (l3 + hlen > end)
			return drop(cnt, FW_CNT_DROP_PARSE);
		p->k.family = 4;
		p->k.proto = iph->protocol;
		p->k.saddr[0] = iph->saddr;
		p->k.daddr[0] = iph->daddr;
		p->ttl = iph->ttl;
		p->tos = iph->tos;
		p->tot_len = bpf_ntohs(iph->tot_len);
		l3hlen = hlen;
		if (iph->frag_off & bpf_htons(0x1fff))
			p->nonfirst_frag = 1;
		else if (parse_l4(l3 + hlen, data, end, p, &nd) < 0)
			return drop(cnt, FW_CNT_DROP_PARSE);
	} else if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return drop(cnt, FW_CNT_DROP_PARSE);
		if (ip6->version != 6)
			return drop(cnt, FW_CNT_DROP_PARSE);
		p->k.family = 6;
		p->k.proto = ip6->nexthdr;
		__builtin_memcpy(p->k.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->k.daddr, &ip6->daddr, 16);
		p->ttl = ip6->hop_limit;
		p->tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		p->flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
		l3hlen = sizeof(*ip6);
		if (p->k.proto == 44 /* fragment header: ports are not where we look */)
			p->nonfirst_frag = 1;
		else if (parse_l4(ip6 + 1, data, end, p, &nd) < 0)
			return drop(cnt, FW_CNT_DROP_PARSE);
		if (nd)
			return pass(cnt, FW_CNT_PASS_ND);
	} else {
		return pass(cnt, FW_CNT_PASS_NON_IP);
	}
	__u32 gso = ctx_gso_size(ctx, tc);
	if (gso) {
		/* A GSO aggregate leaves as segments: the MTU checks are about one
		 * of them. Only TCP and UDP segments are sized here; anything else
		 * lets the FIB helper check the skb itself. */
		if (p->l4hlen && !p->nonfirst_frag)
			p->tot_len = (__u16)(l3hlen + p->l4hlen + gso);
		else
			p->tot_len = 0;
	}
	return -1;
}

/* The parse as a global function, one per program type: the verifier
 * checks it once on its own, and at the call it forgets what it learned
 * about the packet's fields on each parse path (a global function's
 * output memory is unknown to the caller). Without that, every class of
 * packet (family x protocol x VLAN x fragment) would be followed through
 * the rest of the program separately, which is what kept this program near
 * the verifier's limit of a million instructions. */
__noinline int fw_parse_xdp(struct xdp_md *ctx, struct pkt *p)
{
	if (!p)
		return FWV_ABORT;
	return fw_parse_body(ctx, 0, p);
}

__noinline int fw_parse_tc(struct __sk_buff *ctx, struct pkt *p)
{
	if (!p)
		return FWV_ABORT;
	return fw_parse_body(ctx, 1, p);
}

/* What fw_decide needs besides the packet. */
struct fw_env {
	__u64 now_j;
	__u64 bytes;
	__u32 active;
	__u32 slot;
	__u32 in_ifindex;
	struct fw_flow *fc;
	int fc_same;
	int cache_pkt;
	__u32 gen; /* fw_flow_gen of the packet's slot */
};

/* Bumps the flow-cache generation of both directions' slots of a tuple
 * (as the packets carry it): entries filled before miss on every CPU. */
static __always_inline void flow_gen_bump(const struct fw_flow_key *k)
{
	struct fw_flow_key r = {};
	__builtin_memcpy(r.saddr, k->daddr, sizeof(r.saddr));
	__builtin_memcpy(r.daddr, k->saddr, sizeof(r.daddr));
	r.sport = k->dport;
	r.dport = k->sport;
	r.proto = k->proto;
	r.family = k->family;
	__u32 idx = flow_slot(k);
	__u32 *g = bpf_map_lookup_elem(&fw_flow_gen, &idx);
	if (g)
		__sync_fetch_and_add(g, 1);
	idx = flow_slot(&r);
	g = bpf_map_lookup_elem(&fw_flow_gen, &idx);
	if (g)
		__sync_fetch_and_add(g, 1);
}

/* Fills the CPU's flow cache slot with hop for a bounded time: at most the
 * refresh interval (so the session's last-seen and totals lag by no more)
 * and at most what is left of the hop's FIB freshness. */
static __always_inline void fw_cache_fill(struct fw_env *e, const struct pkt *p, const struct fw_hop *hop,
					  const struct fw_settings *set, __u64 refresh, __u64 now)
{
	if (!e->cache_pkt || !set->tick_ns || !hop->len_ok)
		return;
	struct fw_flow *fc = e->fc;
	__u64 age = now - hop->checked_ns;
	__u64 lim = refresh;
	if (age < FW_FIB_CACHE_NS && FW_FIB_CACHE_NS - age < lim)
		lim = FW_FIB_CACHE_NS - age;
	if (age >= FW_FIB_CACHE_NS)
		lim = 0;
	__u64 ticks = lim / set->tick_ns;
	if (!ticks)
		return;
	if (!e->fc_same && fc->packets)
		flush_evicted(fc);
	__builtin_memcpy(&fc->key, &p->wire, sizeof(p->wire));
	fc->expire_j = e->now_j + ticks;
	fc->packets = 0;
	fc->bytes = 0;
	fc->active = e->active;
	fc->gen = e->gen;
	fc->ifindex = hop->ifindex;
	__builtin_memcpy(fc->smac, hop->smac, ETH_ALEN);
	__builtin_memcpy(fc->dmac, hop->dmac, ETH_ALEN);
	fc->len_ok = hop->len_ok;
	fc->xdp_tx = hop->xdp_tx;
	fc->in_ifindex = e->in_ifindex;
	fc->xlate = p->xlate == 1;
	fc->nat_saddr = p->o_saddr;
	fc->nat_daddr = p->o_daddr;
	fc->nat_sport = p->o_sport;
	fc->nat_dport = p->o_dport;
}

/* Adds the packet (and what this CPU's cache entry forwarded for the same
 * flow since) to a live session. */
static __always_inline void session_account(struct fw_sess_val *sv, struct fw_env *e, __u64 now)
{
	sv->last_seen_ns = now;
	sv->packets += 1;
	sv->bytes += e->bytes;
	if (e->fc_same) {
		sv->packets += e->fc->packets;
		sv->bytes += e->fc->bytes;
		e->fc->packets = 0;
		e->fc->bytes = 0;
	}
}

static __always_inline void out_from_hop(struct fw_out *o, const struct fw_hop *hop, const struct pkt *p)
{
	o->ifindex = hop->ifindex;
	__builtin_memcpy(o->smac, hop->smac, ETH_ALEN);
	__builtin_memcpy(o->dmac, hop->dmac, ETH_ALEN);
	o->family = p->k.family;
	o->vlan = p->vlan;
	o->xlate = p->xlate;
	o->neigh = 0;
	o->saddr = p->o_saddr;
	o->daddr = p->o_daddr;
	o->sport = p->o_sport;
	o->dport = p->o_dport;
	o->q_saddr = p->q_saddr;
	o->q_daddr = p->q_daddr;
	o->q_sport = p->q_sport;
	o->q_dport = p->q_dport;
}

/* Looks up the zone of an interface in the active slot; 0: not managed. */
static __always_inline __u32 zone_of(__u32 ifindex, __u32 slot, __u32 *flags)
{
	struct fw_if_key k = {.ifindex = ifindex, .slot = slot};
	struct fw_if_val *v = bpf_map_lookup_elem(&fw_if_zone, &k);
	if (!v)
		return 0;
	if (flags)
		*flags = v->flags;
	return v->zone;
}

/* What a packet of a live session does to its flags (the session model):
 * the reply direction seen; TCP FIN and RST; the initiator's ACK after a
 * reply completes the handshake. Adds the bits with an atomic OR. Not
 * inlined, and returning nothing: the many combinations of bits stay
 * inside it, and the caller reads the flags again (the verifier then
 * merges the caller's paths instead of following one per combination). */
static __noinline void sess_touch(struct fw_sess_val *sv, const struct pkt *p, int from_init)
{
	__u32 f = sv->flags;
	__u32 add = 0;
	if (!from_init)
		add |= FW_SF_REPLY;
	if (p->k.proto == IPPROTO_TCP) {
		__u8 tf = p->tcp_flags;
		if (tf & TCP_RST)
			add |= FW_SF_RST;
		if (tf & TCP_FIN)
			add |= from_init ? FW_SF_FIN_INIT : FW_SF_FIN_RESP;
		if (from_init && ((f | add) & FW_SF_REPLY) && (tf & TCP_ACK) && !(tf & TCP_SYN))
			add |= FW_SF_ESTABLISHED;
		/* Assured once a packet in the reply direction has been seen
		 * and the session is established, by a packet that leaves it so
		 * (neither FIN nor RST, none seen before): the handshake's last
		 * ACK, or a picked-up session's first ordinary reply. */
		__u32 nf = f | add;
		if (!(tf & (TCP_RST | TCP_FIN)) && (nf & (FW_SF_REPLY | FW_SF_ESTABLISHED)) == (FW_SF_REPLY | FW_SF_ESTABLISHED) &&
		    !(nf & (FW_SF_RST | FW_SF_FIN_INIT | FW_SF_FIN_RESP)))
			add |= FW_SF_ASSURED;
	}
	add &= ~f;
	if (add)
		/* A 64-bit OR on the word that starts with flags: the 32-bit
		 * atomics need -mcpu=v3; on bpfel the bits land in flags. */
		__sync_fetch_and_or((__u64 *)&sv->flags, (__u64)add);
}

/* Routes the packet (bpf_fib_lookup into hop). Returns the lookup's
 * result (success or no neighbour) with whether the answer may be reused
 * and what the kernel must do instead of a plain forward (hand_over: a
 * counter, 0 for none), or, as a verdict | 0x100, what happens to a
 * packet that is not forwarded. */
static __always_inline int route_hop(void *ctx, const int tc, struct fw_env *e, struct pkt *p, struct fw_hop *hopp,
				     struct fw_cpu_counters *cnt, int *cacheable, __u32 *hand_over)
{
	cnt->c[FW_CNT_FIB_LOOKUP] += 1;
	int rc = fib_hop(ctx, e->in_ifindex, p, hopp, p->tot_len);
	*cacheable = rc == BPF_FIB_LKUP_RET_SUCCESS && p->tot_len;
	*hand_over = 0;
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		break;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		/* Local delivery, broadcast, multicast: the firewall's own traffic. */
		return 0x100 | pass(cnt, FW_CNT_PASS_LOCAL);
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return 0x100 | pass(cnt, FW_CNT_PASS_FWD_DISABLED);
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		/* The MTU check fails before the FIB names the egress; look up again
		 * without it (XDP: tot_len 0 skips it) so policy still decides before
		 * the kernel fragments or answers "too big". The skb variant checks
		 * the skb when tot_len is 0, so TC asks with the smallest length. */
		*hand_over = (tc && ctx_gso_size(ctx, tc)) ? FW_CNT_PASS_GSO_TOO_BIG : FW_CNT_PASS_FRAG_NEEDED;
		*cacheable = 0;
		cnt->c[FW_CNT_FIB_LOOKUP] += 1;
		rc = fib_hop(ctx, e->in_ifindex, p, hopp, tc ? 1 : 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
			return 0x100 | drop(cnt, FW_CNT_DROP_NO_ROUTE);
		break;
	case BPF_FIB_LKUP_RET_UNSUPP_LWT:
		return 0x100 | drop(cnt, FW_CNT_DROP_UNSUPPORTED_ROUTE);
	default:
		return 0x100 | drop(cnt, FW_CNT_DROP_NO_ROUTE);
	}
	return rc;
}

/* A hit in this CPU's flow cache entry (same tuple, same config and
 * generation, not expired, same ingress, an egress that takes what this
 * program type sends): the hop and the translation come from the entry.
 * Returns 1 on a hit. */
static __always_inline int cache_hit(struct fw_env *e, struct pkt *p, struct fw_hop *hopp, struct fw_cpu_counters *cnt,
				     const int tc)
{
	struct fw_flow *fc = e->fc;
	if (!(e->fc_same && fc->active == e->active && fc->gen == e->gen && (__s64)(fc->expire_j - e->now_j) > 0 &&
	      p->tot_len <= fc->len_ok && fc->in_ifindex == e->in_ifindex && (tc || fc->xdp_tx)))
		return 0;
	fc->packets += 1;
	fc->bytes += e->bytes;
	cnt->c[FW_CNT_FLOW_CACHE_HIT] += 1;
	hopp->ifindex = fc->ifindex;
	hopp->xdp_tx = fc->xdp_tx;
	if (fc->xlate) {
		p->xlate = 1;
		p->o_saddr = fc->nat_saddr;
		p->o_daddr = fc->nat_daddr;
		p->o_sport = fc->nat_sport;
		p->o_dport = fc->nat_dport;
	}
	__builtin_memcpy(hopp->smac, fc->smac, ETH_ALEN);
	__builtin_memcpy(hopp->dmac, fc->dmac, ETH_ALEN);
	return 1;
}

/* The first packet of a flow (no live session), routed to zone `to`:
 * zones, related ICMP errors, the SYN check, the policy on the translated
 * destination, source NAT and the new session. Returns -1 to go on
 * (forward or hand over), or a verdict (counted). */
static __always_inline int judge_new_flow(struct fw_cpu_counters *cnt, struct fw_scratch *sc, struct pkt *p,
					  struct fw_env *e, const struct fw_settings *set, void *key,
					  struct fw_sess_val *sv, struct fw_hop *hopp, __u32 to, __u64 now, int is_tcp)
{
	/* Zones are only needed for a new flow. */
	__u32 from = zone_of(e->in_ifindex, e->slot, NULL);
	if (!from)
		/* Not (or no longer) managed: behave as if detached. */
		return pass(cnt, FW_CNT_PASS_UNMANAGED);
	if (!to)
		/* Routing into an interface we do not manage would bypass the
		 * zone policy: fail closed. */
		return drop(cnt, FW_CNT_DROP_EGRESS_UNMANAGED);
	if (p->icmp_err) {
		/* Errors about an allowed flow (path MTU discovery needs
		 * them) pass like the flow; others have no flow to be part
		 * of and are dropped, like in any stateful firewall. */
		if (!p->related)
			return drop(cnt, FW_CNT_DROP_ICMP_UNRELATED);
		cnt->c[FW_CNT_RELATED_ICMP] += 1;
		if (p->xlate == 2)
			cnt->c[FW_CNT_NAT_ICMP_XLATED] += 1;
		/* (never cached: cache_pkt is unset for ICMP errors) */
	} else {
		/* Only a SYN opens a TCP session (unless mid-stream pickup is
		 * on, which never lets an RST open one). */
		__u32 sflags = 0;
		if (is_tcp && (p->tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) != TCP_SYN) {
			if (!(set->flags & FW_SET_TCP_PICKUP) || (p->tcp_flags & TCP_RST)) {
				if (sv && p->k.family == 4)
					sess4_delete(key);
				else if (sv)
					bpf_map_delete_elem(&fw_sessions_v6, key);
				return drop(cnt, FW_CNT_DROP_TCP_NOT_SYN);
			}
			sflags = FW_SF_ESTABLISHED;
		}
		/* The policy sees the translated destination (port
		 * forwarding) and the original source. */
		__u32 od = p->k.daddr[0];
		__u16 odp = p->k.dport;
		if (p->dnat) {
			p->k.daddr[0] = p->o_daddr;
			p->k.dport = p->o_dport;
		}
		int allow = evaluate(e->slot, from, to, p) == FW_ALLOW;
		p->k.daddr[0] = od;
		p->k.dport = odp;
		if (!allow) {
			if (sv && p->k.family == 4)
				/* Expired and now denied: free the slot so the
				 * session count stays the number of live flows. */
				sess4_delete(key);
			else if (sv)
				bpf_map_delete_elem(&fw_sessions_v6, key);
			return drop(cnt, FW_CNT_DROP_POLICY);
		}
		struct fw_newsess ns = {.now = now, .bytes = e->bytes, .slot = e->slot, .flags = sflags,
					 .from_zone = (__u8)from, .to_zone = (__u8)to};
		if (p->k.family == 4) {
			int r = fw_snat(p, &sc->k4, e->slot, from | (to << 8), hopp->ifindex);
			if (r == -1)
				return drop(cnt, FW_CNT_NAT_EXHAUSTED);
			if (r == -2)
				return drop(cnt, FW_CNT_NAT_UNSUPPORTED);
			if (r > 0) {
				ns.nat.saddr = p->o_saddr;
				ns.nat.sport = p->o_sport;
				ns.nat.snat_rule = (__u8)(r >> 8);
			}
			if (p->dnat) {
				ns.nat.daddr = p->o_daddr;
				ns.nat.dport = p->o_dport;
				ns.nat.dnat_rule = p->dnat;
			}
			ns.nat.epoch = (__u16)set->nat_epoch;
		}
		if (create_session(p, key, hopp, &ns) < 0)
			return FWV_DROP;
		cnt->c[p->k.family == 4 ? FW_CNT_SESSION_CREATED_V4 : FW_CNT_SESSION_CREATED_V6] += 1;
		/* The flow's next packet fills the cache, from the live path
		 * (one path fewer here for the verifier). */
		e->cache_pkt = 0;
	}
	return -1;
}

/* The general path: parse, session, FIB, zones and policy. Returns a
 * verdict; FWV_FWD fills o. Nothing here writes to the packet. */
static __always_inline int fw_decide(void *ctx, const int tc, struct fw_out *o)
{
	__u32 zero = 0;
	struct fw_cpu_counters *cnt = bpf_map_lookup_elem(&fw_counters, &zero);
	if (!cnt)
		return FWV_ABORT;
	struct fw_scratch *sc = bpf_map_lookup_elem(&fw_scratch_map, &zero);
	if (!sc)
		return FWV_ABORT;
	struct pkt *p = &sc->p;
	__builtin_memset(p, 0, sizeof(*p));
	int v = tc ? fw_parse_tc(ctx, p) : fw_parse_xdp(ctx, p);
	if (v >= 0)
		return v;
	/* The packet's own tuple: the flow cache's key, even when NAT makes
	 * k the untranslated world's below. */
	__builtin_memcpy(&p->wire, &p->k, sizeof(p->k));

	__u32 *activep = bpf_map_lookup_elem(&fw_active, &zero);
	if (!activep)
		return FWV_ABORT;
	struct fw_env e = {};
	/* The control plane counts flips; the low bit is the slot. */
	e.active = *activep;
	e.slot = e.active & 1;
	e.bytes = ctx_len(ctx, tc);
	e.in_ifindex = ctx_ingress(ctx, tc);
	struct fw_hop *hopp = &sc->hop;
	__builtin_memset(hopp, 0, sizeof(*hopp));
	int is_tcp = p->k.proto == IPPROTO_TCP;

	/* Flow cache: an established flow's packets normally end here. Jiffies
	 * are one inlined load where the coarse clock is a helper call. TCP
	 * packets that may change the session's state never take it. */
	e.cache_pkt = !p->nonfirst_frag && !p->icmp_err && p->tot_len && !(is_tcp && (p->tcp_flags & TCP_CTL));
	e.now_j = bpf_jiffies64();
	__u32 fidx = flow_slot(&p->k);
	e.fc = bpf_map_lookup_elem(&fw_flow_cache, &fidx);
	if (!e.fc)
		return FWV_ABORT;
	e.fc_same = e.cache_pkt && flow_key_eq(&e.fc->key, &p->k);
	__u32 *genp = bpf_map_lookup_elem(&fw_flow_gen, &fidx);
	if (!genp)
		return FWV_ABORT;
	e.gen = *genp;
	if (cache_hit(&e, p, hopp, cnt, tc))
		goto forward;

	/* The coarse clock is a plain load (jiffy resolution, a few ms), where
	 * bpf_ktime_get_ns reads the clock source: idle timeouts need no better,
	 * and the control plane reads the same clock (CLOCK_MONOTONIC_COARSE). */
	__u64 now = bpf_ktime_get_coarse_ns();
	struct fw_settings *set = bpf_map_lookup_elem(&fw_settings_map, &e.slot);
	if (!set)
		return FWV_ABORT;

	void *key = session_key(p, &sc->k4, &sc->k6, &p->src_is_lo);
	__u32 dir = p->src_is_lo ? 0 : 1;

	/* One call site per map: with a constant map pointer the verifier
	 * inlines the hash lookup; a pointer that may be either map costs an
	 * indirect call per packet. An ICMP error is never a session of its
	 * own: it belongs to the flow it quotes. */
	struct fw_sess_val *sv = NULL;
	if (!p->icmp_err && !p->nonfirst_frag) {
		if (p->k.family == 4)
			sv = bpf_map_lookup_elem(&fw_sessions_v4, &sc->k4);
		else
			sv = bpf_map_lookup_elem(&fw_sessions_v6, &sc->k6);
		if (!sv && p->k.family == 4) {
			/* A reply of a translated flow has a tuple of its own. */
			int r = fw_nat_reverse(p, &sc->k4, e.slot);
			if (r < 0)
				return FWV_DROP; /* counted: to a pool address, no session */
			if (r > 0) {
				sv = bpf_map_lookup_elem(&fw_sessions_v4, &sc->k4);
				dir = p->src_is_lo ? 0 : 1;
			}
		}
	}
	int live = sv && now - sv->last_seen_ns <= sess_timeout(set, p->k.proto, sv->flags, aging_on(p->k.family));
	__u64 refresh = 0;

	if (live) {
		__u32 flags = sv->flags;
		if (is_tcp && (p->tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN &&
		    sess_state(IPPROTO_TCP, flags) == FW_ST_CLOSED) {
			/* A new connection reusing the tuple of a closed one: the
			 * old session ends and the SYN is judged as a new flow. */
			if (p->k.family == 4)
				sess4_delete(key);
			else
				bpf_map_delete_elem(&fw_sessions_v6, key);
			cnt->c[FW_CNT_SESSION_REOPENED] += 1;
			flow_gen_bump(&p->wire);
			sv = NULL;
			live = 0;
			goto route;
		}
		/* A session forwards only between the zones it was made for. */
		int from_init = p->src_is_lo == sv->initiator_is_lo;
		if (zone_of(e.in_ifindex, e.slot, NULL) != (from_init ? sv->from_zone : sv->to_zone))
			return drop(cnt, FW_CNT_DROP_ZONE_MISMATCH);
		if (nat_from_session(p, sv, from_init) < 0)
			return drop(cnt, FW_CNT_NAT_REVERSE_MISS);
		sess_touch(sv, p, from_init);
		flags = sv->flags;
		/* A handshake in progress does not take the cache: the packet
		 * that completes it must reach the session. */
		if (is_tcp && sess_state(IPPROTO_TCP, flags) == FW_ST_OPENING)
			e.cache_pkt = 0;
		refresh = sess_refresh(set, p->k.proto, flags);
		struct fw_hop *h = &sv->hop[dir & 1];
		if (h->checked_ns && now - h->checked_ns < FW_FIB_CACHE_NS && p->tot_len && p->tot_len <= h->len_ok &&
		    (tc || h->xdp_tx)) {
			/* Established flow with a fresh FIB answer: no lookup. */
			__builtin_memcpy(hopp, h, sizeof(*hopp));
			session_account(sv, &e, now);
			cnt->c[FW_CNT_SESSION_HIT] += 1;
			fw_cache_fill(&e, p, hopp, set, refresh, now);
			goto forward;
		}
	}

route:
	if (p->icmp_err)
		/* Judged before routing: an error about a translated flow is
		 * addressed to the translated world (the firewall's own address,
		 * say) and is routed to the flow's untranslated sender. */
		p->related = (__u8)icmp_related(ctx_data(ctx, tc), ctx_end(ctx, tc), p, set, now);
	if (!live && p->k.family == 4 && !p->icmp_err && !p->xlate)
		/* A new flow: destination NAT first, so routing and the policy
		 * see the translated destination. */
		fw_dnat(p, e.slot, zone_of(e.in_ifindex, e.slot, NULL));
	int cacheable;
	/* What happens to the packet once the session is settled: forwarded
	 * (0), or handed to the kernel for a reason (one variable, not three,
	 * lives to the end of this function: fewer verifier states). */
	__u32 hand_over;
	int rc = route_hop(ctx, tc, &e, p, hopp, cnt, &cacheable, &hand_over);
	if (rc & 0x100)
		return rc & 0xff;

	if (p->nonfirst_frag)
		return drop(cnt, FW_CNT_DROP_FRAGMENT);

	__u32 to_flags = 0;
	__u32 to = zone_of(hopp->ifindex, e.slot, &to_flags);
	hopp->xdp_tx = to && (to_flags & FW_IF_XDP_TX);

	if (!hand_over && rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		hand_over = FW_CNT_PASS_NO_NEIGH;
	/* Only a complete answer is worth reusing: without a neighbour the
	 * kernel must see the packet, and an oversized packet must too. */
	hopp->checked_ns = cacheable ? now : 0;
	hopp->len_ok = cacheable ? p->tot_len : 0;
	__builtin_memset(hopp->pad, 0, sizeof(hopp->pad));

	if (live) {
		session_account(sv, &e, now);
		__builtin_memcpy(&sv->hop[dir & 1], hopp, sizeof(*hopp));
		cnt->c[FW_CNT_SESSION_HIT] += 1;
	} else {
		if (sv)
			cnt->c[FW_CNT_SESSION_EXPIRED] += 1;
		int jv = judge_new_flow(cnt, sc, p, &e, set, key, sv, hopp, to, now, is_tcp);
		if (jv >= 0)
			return jv;
	}

	if (hand_over) {
		if (p->xlate && hand_over == FW_CNT_PASS_NO_NEIGH) {
			if (p->ttl <= 1)
				/* The kernel answers, about the packet as sent. */
				return pass(cnt, FW_CNT_PASS_TTL);
			cnt->c[hand_over] += 1;
			out_from_hop(o, hopp, p);
			if (tc) {
				/* Translated, routed out of the egress by the
				 * kernel's neighbour output, which resolves the next
				 * hop (its forwarding path would drop a packet whose
				 * source is now the firewall's own address: a
				 * martian). */
				o->neigh = 1;
				return FWV_FWD;
			}
			/* XDP has no neighbour output: the kernel forwards this
			 * one packet, translated. A masqueraded source is its own
			 * address, which its forwarding refuses: until something
			 * resolves that next hop, such flows do not pass (see
			 * docs/architecture.md, NAT). */
			return FWV_PASS_NAT;
		}
		/* (Too big, TTL: untranslated, so the kernel's ICMP error goes to
		 * the original sender about the packet it sent.) */
		return pass(cnt, hand_over);
	}
	fw_cache_fill(&e, p, hopp, set, refresh, now);

forward:
	if (p->ttl <= 1)
		return pass(cnt, FW_CNT_PASS_TTL);
	out_from_hop(o, hopp, p);
	if (!tc && !hopp->xdp_tx) {
		/* The egress drops what XDP redirects into it (a veth whose peer
		 * runs no NAPI): the kernel forwards this allowed packet. */
		cnt->c[FW_CNT_PASS_EGRESS_NOT_XDP] += 1;
		return p->xlate ? FWV_PASS_NAT : FWV_PASS;
	}
	return FWV_FWD;
}

/* IPv6 hop limit: no header checksum, but a CHECKSUM_COMPLETE skb's sum
 * covers the byte, so TC tells the kernel the difference (the kernel's own
 * forwarding drops such a sum instead). */
static __always_inline void ipv6_dec_hop(void *ctx, const int tc, struct ipv6hdr *ip6)
{
	if (tc) {
		__be32 old = ((__be32 *)ip6)[1];
		ip6->hop_limit--;
		__be32 new = ((__be32 *)ip6)[1];
		bpf_csum_update(ctx, bpf_csum_diff(&old, 4, &new, 4, 0));
		return;
	}
	ip6->hop_limit--;
}

/* Redirects to egress; XDP goes through the (egress, output) broadcast
 * devmap when this packet is mirrored. */
static __always_inline int fw_redirect(const int tc, struct mstate *ms, __u32 egress)
{
	if (tc)
		return bpf_redirect(egress, 0);
	if (ms->out) {
		struct fw_pair_key pk = {.egress = egress, .output = ms->out};
		void *bm = bpf_map_lookup_elem(&fw_mirror_pairs, &pk);
		if (bm) {
			ms->cloned = 1;
			return bpf_redirect_map(bm, 0, BPF_F_BROADCAST | XDP_DROP);
		}
	}
	return bpf_redirect_map(&fw_tx_ports, egress, XDP_DROP);
}

/* ---- NAT rewrite at forwarding ---- */

/* Writes new into a 16-bit field of an ICMP message, keeping the
 * message's checksum (*outer) right. */
static __always_inline void put16(__u16 *field, __u16 new, __u16 *outer)
{
	__u16 old = *field;
	if (old != new) {
		csum_repl16(outer, old, new);
		*field = new;
	}
}

/* An ICMP error about a translated flow (xlate 2): the outer addresses and
 * the quoted packet become the untranslated world's; the outer IP, the
 * quoted IP and L4 and the ICMP checksums follow, so every byte sum stays
 * as it was (a CHECKSUM_COMPLETE skb's too). */
static __always_inline int icmp_err_rewrite(void *ctx, const int tc, const struct fw_out *o, __u32 l3off, __u32 hlen)
{
	void *data = ctx_data(ctx, tc);
	void *end = ctx_end(ctx, tc);
	struct iphdr *iph = data + l3off;
	if ((void *)(iph + 1) > end)
		return -1;
	struct icmp_echo_ *ic = (void *)iph + (hlen & 0x3c);
	if ((void *)(ic + 1) > end)
		return -1;
	if (iph->saddr != o->saddr) {
		csum_repl32(&iph->check, iph->saddr, o->saddr);
		iph->saddr = o->saddr;
	}
	if (iph->daddr != o->daddr) {
		csum_repl32(&iph->check, iph->daddr, o->daddr);
		iph->daddr = o->daddr;
	}
	struct iphdr *ih = (void *)(ic + 1);
	if ((void *)(ih + 1) > end)
		return -1;
	__u16 *ocs = (__u16 *)&ic->csum;
	__u8 proto = ih->protocol;
	__u32 ihl = (ih->ihl & 0xf) * 4;
	if (ihl < sizeof(*ih))
		return -1;
	__u16 *il4 = (void *)ih + (ihl & 0x3c);
	if ((void *)(il4 + 4) > end)
		return -1;
	/* Old quoted addresses, for the quoted UDP checksum's pseudo-header. */
	__u32 osa = ih->saddr, oda = ih->daddr;
	/* The quoted IP header: its checksum follows its addresses, and the
	 * ICMP checksum follows all three. */
	__u16 ck = ih->check;
	csum_repl32(&ck, osa, o->q_saddr);
	csum_repl32(&ck, oda, o->q_daddr);
	put16((__u16 *)&ih->saddr, (__u16)o->q_saddr, ocs);
	put16((__u16 *)&ih->saddr + 1, (__u16)(o->q_saddr >> 16), ocs);
	put16((__u16 *)&ih->daddr, (__u16)o->q_daddr, ocs);
	put16((__u16 *)&ih->daddr + 1, (__u16)(o->q_daddr >> 16), ocs);
	put16((__u16 *)&ih->check, ck, ocs);
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__u16 osp = il4[0], odp = il4[1];
		put16(&il4[0], o->q_sport, ocs);
		put16(&il4[1], o->q_dport, ocs);
		if (proto == IPPROTO_UDP && il4[3]) {
			/* The quoted UDP checksum is within the 8 bytes a router
			 * quotes: keep it right (a zero one stays zero). */
			__u16 uck = il4[3];
			csum_repl32(&uck, osa, o->q_saddr);
			csum_repl32(&uck, oda, o->q_daddr);
			csum_repl16(&uck, osp, o->q_sport);
			csum_repl16(&uck, odp, o->q_dport);
			put16(&il4[3], uck ? uck : 0xffff, ocs);
		}
	} else if (proto == IPPROTO_ICMP) {
		/* A quoted echo: its id (the third word), and its checksum. */
		__u16 oid = il4[2];
		if (oid != o->q_sport) {
			__u16 ick = il4[1];
			csum_repl16(&ick, oid, o->q_sport);
			put16(&il4[2], o->q_sport, ocs);
			put16(&il4[1], ick, ocs);
		}
	}
	return 0;
}

/* XDP: the frame's checksums are complete (XDP is only chosen where they
 * are), so every change is an incremental update (RFC 1624). A UDP
 * checksum of zero (none) stays zero; one that comes out zero is written
 * as 0xffff. */
static __always_inline int nat_rewrite_xdp(struct xdp_md *ctx, const struct fw_out *o, __u32 l3off, __u32 hlen)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + l3off;
	if ((void *)(iph + 1) > end)
		return -1;
	void *l4 = (void *)iph + (hlen & 0x3c);
	__u8 proto = iph->protocol;
	__u16 *ports = l4;
	__u16 *l4ck = NULL;
	int udp = 0;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return -1;
		l4ck = (__u16 *)&th->check;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return -1;
		l4ck = (__u16 *)&uh->check;
		udp = 1;
	} else if (proto == IPPROTO_ICMP) {
		struct icmp_echo_ *ie = l4;
		if ((void *)(ie + 1) > end)
			return -1;
		if (ie->id != o->sport) {
			csum_repl16((__u16 *)&ie->csum, ie->id, o->sport);
			ie->id = o->sport;
		}
	} else {
		return -1;
	}
	int ck = l4ck && !(udp && *l4ck == 0);
	__u32 os = iph->saddr, od = iph->daddr;
	if (os != o->saddr) {
		csum_repl32(&iph->check, os, o->saddr);
		if (ck)
			csum_repl32(l4ck, os, o->saddr);
		iph->saddr = o->saddr;
	}
	if (od != o->daddr) {
		csum_repl32(&iph->check, od, o->daddr);
		if (ck)
			csum_repl32(l4ck, od, o->daddr);
		iph->daddr = o->daddr;
	}
	if (l4ck) {
		if (ports[0] != o->sport) {
			if (ck)
				csum_repl16(l4ck, ports[0], o->sport);
			ports[0] = o->sport;
		}
		if (ports[1] != o->dport) {
			if (ck)
				csum_repl16(l4ck, ports[1], o->dport);
			ports[1] = o->dport;
		}
		if (udp && ck && *l4ck == 0)
			*l4ck = 0xffff;
	}
	return 0;
}

/* TC: the kernel's checksum helpers, which know the skb's checksum state:
 * a partial checksum (offloaded, as local sockets on veths send them) is
 * kept partial, and a CHECKSUM_COMPLETE sum follows the change. */
static __always_inline int nat_rewrite_tc(struct __sk_buff *skb, const struct fw_out *o, __u32 l3off, __u32 hlen)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + l3off;
	if ((void *)(iph + 1) > end)
		return -1;
	__u32 os = iph->saddr, od = iph->daddr;
	__u8 proto = iph->protocol;
	__u32 l4off = l3off + (hlen & 0x3c);
	__u32 ckoff;
	__u64 pflags = BPF_F_PSEUDO_HDR;
	__u64 mflags = 0;
	switch (proto) {
	case IPPROTO_TCP:
		ckoff = l4off + 16;
		break;
	case IPPROTO_UDP:
		ckoff = l4off + 6;
		mflags = BPF_F_MARK_MANGLED_0;
		break;
	case IPPROTO_ICMP:
		ckoff = l4off + 2;
		pflags = 0;
		break;
	default:
		return -1;
	}
	if (os != o->saddr) {
		if (pflags && bpf_l4_csum_replace(skb, ckoff, os, o->saddr, pflags | mflags | 4))
			return -1;
		if (bpf_l3_csum_replace(skb, l3off + 10, os, o->saddr, 4) ||
		    bpf_skb_store_bytes(skb, l3off + 12, &o->saddr, 4, 0))
			return -1;
	}
	if (od != o->daddr) {
		if (pflags && bpf_l4_csum_replace(skb, ckoff, od, o->daddr, pflags | mflags | 4))
			return -1;
		if (bpf_l3_csum_replace(skb, l3off + 10, od, o->daddr, 4) ||
		    bpf_skb_store_bytes(skb, l3off + 16, &o->daddr, 4, 0))
			return -1;
	}
	__u16 cur[3];
	if (bpf_skb_load_bytes(skb, l4off, cur, sizeof(cur)))
		return -1;
	if (proto == IPPROTO_ICMP) {
		if (cur[2] != o->sport) {
			if (bpf_l4_csum_replace(skb, ckoff, cur[2], o->sport, 2) ||
			    bpf_skb_store_bytes(skb, l4off + 4, &o->sport, 2, 0))
				return -1;
		}
		return 0;
	}
	if (cur[0] != o->sport) {
		if (bpf_l4_csum_replace(skb, ckoff, cur[0], o->sport, mflags | 2) ||
		    bpf_skb_store_bytes(skb, l4off, &o->sport, 2, 0))
			return -1;
	}
	if (cur[1] != o->dport) {
		if (bpf_l4_csum_replace(skb, ckoff, cur[1], o->dport, mflags | 2) ||
		    bpf_skb_store_bytes(skb, l4off + 2, &o->dport, 2, 0))
			return -1;
	}
	return 0;
}

static __always_inline int nat_ip_hlen(void *ctx, const int tc, const struct fw_out *o, __u32 *l3off)
{
	void *data = ctx_data(ctx, tc);
	void *end = ctx_end(ctx, tc);
	*l3off = sizeof(struct ethhdr) + (o->vlan ? sizeof(struct vlan_hdr_) : 0);
	struct iphdr *iph = data + *l3off;
	if ((void *)(iph + 1) > end || iph->version != 4)
		return -1;
	__u32 hlen = (iph->ihl & 0xf) * 4;
	return hlen < sizeof(*iph) ? -1 : (int)hlen;
}

/* The NAT rewrite of a decided packet, one global function per program
 * type (verified once, apart from the main path). 0, or -1: malformed. */
__noinline int fw_nat_xdp(struct xdp_md *ctx, struct fw_out *o)
{
	if (!o)
		return -1;
	__u32 l3off;
	int hlen = nat_ip_hlen(ctx, 0, o, &l3off);
	if (hlen < 0)
		return -1;
	if (o->xlate == 2)
		return icmp_err_rewrite(ctx, 0, o, l3off, hlen);
	return nat_rewrite_xdp(ctx, o, l3off, hlen);
}

__noinline int fw_nat_tc(struct __sk_buff *ctx, struct fw_out *o)
{
	if (!o)
		return -1;
	__u32 l3off;
	int hlen = nat_ip_hlen(ctx, 1, o, &l3off);
	if (hlen < 0)
		return -1;
	if (o->xlate == 2)
		return icmp_err_rewrite(ctx, 1, o, l3off, hlen);
	return nat_rewrite_tc(ctx, o, l3off, hlen);
}

/* Rewrites a decided packet (TTL, the VLAN tag, MACs) and redirects it.
 * Returns the program type's action. */
static __always_inline int fw_forward(void *ctx, const int tc, const struct fw_out *o, struct mstate *ms)
{
	__u32 zero = 0;
	struct fw_cpu_counters *cnt = bpf_map_lookup_elem(&fw_counters, &zero);
	if (!cnt)
		return native(FWV_ABORT, tc);
	ms->modified = 1;
	if (o->xlate && (tc ? fw_nat_tc(ctx, (struct fw_out *)o) : fw_nat_xdp(ctx, (struct fw_out *)o)))
		return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
	void *data = ctx_data(ctx, tc);
	void *end = ctx_end(ctx, tc);
	__u32 l3off = sizeof(struct ethhdr) + (o->vlan ? sizeof(struct vlan_hdr_) : 0);
	if (o->family == 4) {
		struct iphdr *iph = data + l3off;
		if ((void *)(iph + 1) > end)
			return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
		ipv4_dec_ttl(iph);
	} else {
		struct ipv6hdr *ip6 = data + l3off;
		if ((void *)(ip6 + 1) > end)
			return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
		ipv6_dec_hop(ctx, tc, ip6);
	}

	if (tc) {
		/* Egress is the FIB's device, untagged: a tag in the data or one
		 * the kernel already moved into the skb goes. */
		if (o->vlan || ((struct __sk_buff *)ctx)->vlan_present) {
			if (bpf_skb_vlan_pop(ctx))
				return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
		}
	} else if (o->vlan) {
		/* Drop the tag by moving the start of the frame forward and
		 * writing a fresh Ethernet header. */
		if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct vlan_hdr_)))
			return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
	}
	data = ctx_data(ctx, tc);
	end = ctx_end(ctx, tc);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
	__builtin_memcpy(eth->h_dest, o->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, o->smac, ETH_ALEN);
	eth->h_proto = o->family == 4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);

	int act = (tc && o->neigh) ? (int)bpf_redirect_neigh(o->ifindex, NULL, 0, 0) : fw_redirect(tc, ms, o->ifindex);
	if (act != (tc ? TC_ACT_REDIRECT : XDP_REDIRECT))
		return native(drop(cnt, FW_CNT_DROP_EGRESS_UNMANAGED), tc);
	cnt->c[FW_CNT_FORWARDED] += 1;
	return act;
}

/* A verdict other than forward; FWV_PASS_NAT hands the packet to the
 * kernel translated. */
static __always_inline int fw_pass_nat(void *ctx, const int tc, struct fw_out *o, int v)
{
	if (v != FWV_PASS_NAT)
		return native(v, tc);
	if (tc ? fw_nat_tc(ctx, o) : fw_nat_xdp(ctx, o))
		return native(FWV_DROP, tc);
	return native(FWV_PASS, tc);
}

/* Forwards a flow-cache hit that needs no translation straight from the
 * entry: no parse, no scratch, one counters lookup. It writes what
 * fw_forward writes for the same packet (the fast path takes only untagged
 * frames). XDP without a mirror clone redirects by ifindex, which costs
 * less than the devmap: the entry was filled by the general path for a
 * managed egress that takes XDP redirects (fast_valid checks both, and
 * the config it was filled under). */
static __always_inline int fast_forward(void *ctx, const int tc, struct fw_flow *fc, __u8 family, struct mstate *ms)
{
	__u32 zero = 0;
	struct fw_cpu_counters *cnt = bpf_map_lookup_elem(&fw_counters, &zero);
	if (!cnt)
		return native(FWV_ABORT, tc);
	fc->packets += 1;
	fc->bytes += ctx_len(ctx, tc);
	cnt->c[FW_CNT_FLOW_CACHE_HIT] += 1;
	ms->modified = 1;
	void *data = ctx_data(ctx, tc);
	void *end = ctx_end(ctx, tc);
	if (family == 4) {
		struct iphdr *iph = data + sizeof(struct ethhdr);
		if ((void *)(iph + 1) > end)
			return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
		ipv4_dec_ttl(iph);
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		if ((void *)(ip6 + 1) > end)
			return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
		ipv6_dec_hop(ctx, tc, ip6);
	}
	if (tc && ((struct __sk_buff *)ctx)->vlan_present) {
		if (bpf_skb_vlan_pop(ctx))
			return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
	}
	data = ctx_data(ctx, tc);
	end = ctx_end(ctx, tc);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return native(drop(cnt, FW_CNT_DROP_PARSE), tc);
	__builtin_memcpy(eth->h_dest, fc->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fc->smac, ETH_ALEN);
	int act = (tc || ms->out) ? fw_redirect(tc, ms, fc->ifindex) : (int)bpf_redirect(fc->ifindex, 0);
	if (act != (tc ? TC_ACT_REDIRECT : XDP_REDIRECT))
		return native(drop(cnt, FW_CNT_DROP_EGRESS_UNMANAGED), tc);
	cnt->c[FW_CNT_FORWARDED] += 1;
	return act;
}

static __always_inline void tc_mirror(struct __sk_buff *skb, int v);
static __always_inline void tc_pull(struct __sk_buff *skb);

/* The whole firewall for one packet: a flow-cache hit is forwarded from
 * its entry; anything else is decided, then forwarded or not. TC mirrors
 * after the decision (tc_mirror). */
static __always_inline int fw_main(void *ctx, const int tc, struct mstate *ms)
{
	__u32 zero = 0;
	__u8 family = 0;
	struct fw_flow *fc = fast_path(ctx, tc, &family);
	if (__builtin_expect(fc && !fc->xlate, 1)) {
		if (tc)
			tc_mirror(ctx, FWV_FWD);
		return fast_forward(ctx, tc, fc, family, ms);
	}
	if (tc)
		tc_pull(ctx);
	struct fw_scratch2 *so = bpf_map_lookup_elem(&fw_scratch_out, &zero);
	if (!so)
		return native(FWV_ABORT, tc);
	struct fw_out *o = &so->o;
	int v;
	if (fc) {
		/* A translated hit: the general forward rewrites it. */
		struct fw_cpu_counters *cnt = bpf_map_lookup_elem(&fw_counters, &zero);
		if (!cnt)
			return native(FWV_ABORT, tc);
		fc->packets += 1;
		fc->bytes += ctx_len(ctx, tc);
		cnt->c[FW_CNT_FLOW_CACHE_HIT] += 1;
		fast_out(fc, family, o);
		v = FWV_FWD;
	} else {
		v = fw_decide(ctx, tc, o);
	}
	if (tc)
		tc_mirror(ctx, v == FWV_PASS_NAT ? FWV_PASS : v);
	if (v == FWV_FWD)
		return fw_forward(ctx, tc, o, ms);
	return fw_pass_nat(ctx, tc, o, v);
}

/* Makes a selected frame carry its first FW_MIRROR_META bytes as XDP
 * metadata, which travels with the frame through the redirect, and records
 * the clone in ms. */
static __always_inline void mirror_prepare(struct xdp_md *ctx, struct mstate *ms, struct fw_mirror_stats *st, __u32 out, __u32 idx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	/* A frame may arrive with metadata already (a driver's, stale from a
	 * recycled page as measured with live-frames test runs, or the stage's):
	 * make it exactly FW_MIRROR_META bytes rather than adding to it. */
	long have = (long)data - (long)ctx->data_meta;
	if (data + FW_MIRROR_META > end || have < 0 || have > FW_MIRROR_META ||
	    (have != FW_MIRROR_META && bpf_xdp_adjust_meta(ctx, (int)(have - FW_MIRROR_META)))) {
		st->not_short += 1;
		return;
	}
	void *meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (meta + FW_MIRROR_META > data || data + FW_MIRROR_META > end) {
		st->not_short += 1;
		return;
	}
	__builtin_memcpy(meta, data, FW_MIRROR_META);
	ms->out = out;
	ms->idx = idx;
	ms->len = (__u32)(end - data);
}

/* Looks at how far the stage is behind and sets the mode and credit of the
 * next frames. The stage's counter is read only here, once per credit, so
 * the cache line it writes is not pulled over for every frame. */
static __always_inline void stage_credit(struct fw_stage_prod *p, __u32 cpu)
{
	struct fw_stage_done *d = bpf_map_lookup_elem(&fw_stage_done_map, &cpu);
	if (!d) {
		p->mode = FW_STAGE_INLINE;
		p->credit = 64;
		return;
	}
	__u64 done = *(volatile __u64 *)&d->done;
	__u64 base = p->sent - p->lost; /* handed over and not written off */
	if (done > base) {
		/* Frames Go wrote off were taken after all. */
		if (done <= p->sent)
			p->lost = p->sent - done;
		base = done;
	}
	__u64 inflight = base - done;
	if (inflight < FW_STAGE_CLONE_LIMIT) {
		p->mode = FW_STAGE_CLONE;
		p->credit = (__u32)(FW_STAGE_CLONE_LIMIT - inflight);
	} else if (inflight < FW_STAGE_LIMIT) {
		p->mode = FW_STAGE_FWD;
		p->credit = (__u32)(FW_STAGE_LIMIT - inflight);
	} else {
		p->mode = FW_STAGE_INLINE;
		p->credit = 16;
	}
}

#define STAGE_NONE -1   /* no stage: forward and clone here */
#define STAGE_INLINE -2 /* stage behind: forward here, no clone */

/* Hands a frame of a mirrored ingress to this CPU's stage, which forwards
 * it (and clones it when selected). Returns XDP_REDIRECT when handed over. */
static __always_inline int stage_handoff(struct xdp_md *ctx, int selected, __u32 idx, struct fw_mirror_stats *st)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u32 *tgt = bpf_map_lookup_elem(&fw_stage_cpu, &cpu);
	if (!tgt || !*tgt)
		return STAGE_NONE;
	__u32 zero = 0;
	struct fw_stage_prod *p = bpf_map_lookup_elem(&fw_stage_prod_map, &zero);
	if (!p)
		return STAGE_NONE;
	if (!p->credit)
		stage_credit(p, cpu);
	__u32 mode = p->mode;
	if (mode == FW_STAGE_INLINE) {
		if (p->credit)
			p->credit -= 1;
		p->inline_ += 1;
		if (selected)
			st->not_backlog += 1;
		return STAGE_INLINE;
	}
	/* Metadata first, the redirect last: a frame that cannot carry the
	 * metadata (a driver without support) is forwarded here, credit
	 * untouched. */
	void *data = (void *)(long)ctx->data;
	long have = (long)data - (long)ctx->data_meta;
	const long want = sizeof(struct fw_stage_meta);
	if (have < 0 || have > FW_MIRROR_META || (have != want && bpf_xdp_adjust_meta(ctx, (int)(have - want))))
		return STAGE_NONE;
	struct fw_stage_meta *m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return STAGE_NONE;
	int clone = selected && mode == FW_STAGE_CLONE;
	m->src_cpu = (__u16)cpu;
	m->clone = (__u16)clone;
	m->index = idx;
	if (bpf_redirect_map(&fw_cpus, *tgt - 1, 0) != XDP_REDIRECT)
		return STAGE_NONE; /* no queue on that CPU (being reprogrammed) */
	if (p->credit)
		p->credit -= 1;
	if (selected && !clone)
		st->not_backlog += 1;
	p->sent += 1;
	return XDP_REDIRECT;
}

/* Decides whether this packet is cloned: the ingress has a rule, the
 * per-CPU sampling countdown selects it and the output is up. With a stage,
 * the frame goes there (XDP_REDIRECT is returned); otherwise a selected
 * frame is prepared for the clone here and -1 is returned. */
static __always_inline int mirror_begin(struct xdp_md *ctx, struct mstate *ms)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&fw_mirror_on, &zero);
	if (!on || !*on)
		return -1;
	__u32 in = ctx->ingress_ifindex;
	struct fw_mirror_cfg *mc = bpf_map_lookup_elem(&fw_mirror_rules, &in);
	if (!mc)
		return -1;
	__u32 idx = mc->index;
	struct fw_mirror_stats *st = bpf_map_lookup_elem(&fw_mirror_counts, &idx);
	if (!st)
		return -1;
	st->seen += 1;
	int selected = 1;
	if (mc->rate > 1) {
		/* Sampled out is not a loss: counted nowhere. */
		if (st->countdown > 1) {
			st->countdown -= 1;
			selected = 0;
		} else {
			st->countdown = mc->rate;
		}
	}
	if (selected && !mc->up) {
		st->not_output_down += 1;
		selected = 0;
	}
	int r = STAGE_NONE;
	if (mc->staged)
		r = stage_handoff(ctx, selected, idx, st);
	if (r == XDP_REDIRECT)
		return r;
	if (selected && r == STAGE_NONE)
		mirror_prepare(ctx, ms, st, mc->out_ifindex, idx);
	return -1;
}

/* Accounts for the clone of a selected packet, and sends the frame of a
 * dropped one (unchanged: nothing rewrote it) to the output alone. Every
 * selected packet ends in exactly one stats field. */
static __always_inline int mirror_end(struct mstate *ms, int act)
{
	__u32 idx = ms->idx;
	struct fw_mirror_stats *st = bpf_map_lookup_elem(&fw_mirror_counts, &idx);
	if (!st)
		return act;
	if (act == XDP_REDIRECT && ms->cloned) {
		st->mirrored += 1;
		st->mirrored_bytes += ms->len;
		return act;
	}
	if (act == XDP_DROP && !ms->modified) {
		if (bpf_redirect_map(&fw_mirror_out, ms->out, XDP_DROP) == XDP_REDIRECT) {
			st->mirrored += 1;
			st->mirrored_bytes += ms->len;
			return XDP_REDIRECT;
		}
	}
	if (act == XDP_PASS)
		st->not_passed += 1;
	else
		st->not_other += 1;
	return act;
}

SEC("xdp")
int xdp_fw(struct xdp_md *ctx)
{
	struct mstate ms = {};
	int r = mirror_begin(ctx, &ms);
	if (r == XDP_REDIRECT)
		return r;
	int act = fw_main(ctx, 0, &ms);
	if (ms.out)
		act = mirror_end(&ms, act);
	return act;
}

/* The mirror stage: runs in the cpumap kthread of the stage CPU on frames
 * a mirrored ingress handed over, and does there what xdp_fw does inline,
 * including the clone when the receiving CPU selected one. */
SEC("xdp/cpumap")
int xdp_fw_stage(struct xdp_md *ctx)
{
	struct mstate ms = {};
	struct fw_stage_meta *m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) <= (void *)(long)ctx->data) {
		__u32 src = m->src_cpu;
		__u32 idx = m->index;
		int clone = m->clone;
		struct fw_stage_done *d = bpf_map_lookup_elem(&fw_stage_done_map, &src);
		if (d)
			d->done += 1; /* this CPU is the only writer */
		if (clone) {
			struct fw_mirror_stats *st = bpf_map_lookup_elem(&fw_mirror_counts, &idx);
			__u32 in = ctx->ingress_ifindex;
			struct fw_mirror_cfg *mc = bpf_map_lookup_elem(&fw_mirror_rules, &in);
			if (st) {
				if (mc && mc->index == idx)
					mirror_prepare(ctx, &ms, st, mc->out_ifindex, idx);
				else
					st->not_other += 1; /* the rule changed meanwhile */
			}
		}
	}
	int act = fw_main(ctx, 0, &ms);
	if (ms.out)
		act = mirror_end(&ms, act);
	return act;
}

/* Devmap program of a broadcast map's output entry: turns the frame back
 * into the one received. The primary rewrite only touches the first
 * FW_MIRROR_META bytes, after removing a VLAN tag (4 bytes) from the front
 * when the received frame had one. */
SEC("xdp/devmap")
int xdp_fw_mirror(struct xdp_md *ctx)
{
	void *meta = (void *)(long)ctx->data_meta;
	void *data = (void *)(long)ctx->data;
	__u64 saved[FW_MIRROR_META / 8];
	if (meta + FW_MIRROR_META > data)
		return XDP_DROP;
	__builtin_memcpy(saved, meta, FW_MIRROR_META);
	struct ethhdr *orig = (struct ethhdr *)saved;
	if (orig->h_proto == bpf_htons(ETH_P_8021Q_)) {
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct vlan_hdr_)))
			return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + FW_MIRROR_META > end)
		return XDP_DROP;
	__builtin_memcpy(data, saved, FW_MIRROR_META);
	return XDP_PASS;
}

/* The sweep: a bpf_timer that walks both session tables, deletes what
 * expired, counts what is left and switches early aging per family, then
 * arms itself again. It runs in the kernel whether or not a control process
 * is alive, so a pinned dataplane whose daemon died does not fill up. */
struct sweep_ctx {
	__u64 now;
	__u64 used;
	__u64 unassured;
	__u64 expired;
	const struct fw_settings *set;
	int aging;
	int pad;
};

static __always_inline long sweep_one(void *map, const void *key, __u8 proto, struct fw_sess_val *v,
				      struct sweep_ctx *c, const int v4)
{
	__u32 flags = v->flags;
	if (c->now > v->last_seen_ns && c->now - v->last_seen_ns > sess_timeout(c->set, proto, flags, c->aging)) {
		if (v4) {
			struct fw_sess4_key k4;
			__builtin_memcpy(&k4, key, sizeof(k4)); /* (a map key cannot be a global function's argument) */
			nat_release(&k4, v);
		}
		if (bpf_map_delete_elem(map, key) == 0)
			c->expired += 1;
		return 0;
	}
	c->used += 1;
	if (!sess_assured(proto, flags))
		c->unassured += 1;
	return 0;
}

static long sweep4(void *map, struct fw_sess4_key *key, struct fw_sess_val *v, struct sweep_ctx *c)
{
	return sweep_one(map, key, key->proto, v, c, 1);
}

static long sweep6(void *map, struct fw_sess6_key *key, struct fw_sess_val *v, struct sweep_ctx *c)
{
	return sweep_one(map, key, key->proto, v, c, 0);
}

/* NAT entries whose session is gone (a release that was missed: the
 * session was deleted from Go, say) are removed here, so a pool never
 * leaks its slots. */
static long sweep_ports(void *map, struct fw_nat_port_key *key, struct fw_sess4_key *owner, void *c)
{
	if (!bpf_map_lookup_elem(&fw_sessions_v4, owner) && bpf_map_delete_elem(map, key) == 0)
		nat_addr_count(key->addr, 0);
	return 0;
}

static long sweep_rev(void *map, struct fw_nat_rev_key *key, struct fw_sess4_key *owner, void *c)
{
	if (!bpf_map_lookup_elem(&fw_sessions_v4, owner))
		bpf_map_delete_elem(map, key);
	return 0;
}

/* Early aging turns on at 80 % of the table and off below 75 % (a little
 * hysteresis, so it does not flap at the edge). */
static __always_inline __u32 aging_next(__u32 cur, __u64 used, __u64 cap)
{
	if (!cap)
		return 0;
	if (used * 100 >= cap * 80)
		return 1;
	if (used * 100 < cap * 75)
		return 0;
	return cur;
}

static int sweep_cb(void *map, __u32 *key, struct fw_sweep *sw)
{
	__u32 zero = 0;
	__u32 *activep = bpf_map_lookup_elem(&fw_active, &zero);
	if (!activep)
		return 0;
	__u32 slot = *activep & 1;
	struct fw_settings *set = bpf_map_lookup_elem(&fw_settings_map, &slot);
	if (!set)
		return 0;
	__u64 start = bpf_ktime_get_coarse_ns();
	struct sweep_ctx c = {.now = start, .set = set, .aging = sw->aging[0]};
	bpf_for_each_map_elem(&fw_sessions_v4, sweep4, &c, 0);
	sw->used[0] = c.used;
	sw->unassured[0] = c.unassured;
	sw->aging[0] = aging_next(sw->aging[0], c.used, set->capacity);
	__u64 expired = c.expired;
	c.used = 0;
	c.unassured = 0;
	c.expired = 0;
	c.aging = sw->aging[1];
	bpf_for_each_map_elem(&fw_sessions_v6, sweep6, &c, 0);
	sw->used[1] = c.used;
	sw->unassured[1] = c.unassured;
	bpf_for_each_map_elem(&fw_nat_ports, sweep_ports, NULL, 0);
	bpf_for_each_map_elem(&fw_nat_rev, sweep_rev, NULL, 0);
	sw->aging[1] = aging_next(sw->aging[1], c.used, set->capacity);
	sw->expired += expired + c.expired;
	sw->runs += 1;
	sw->last_ns = bpf_ktime_get_coarse_ns();
	sw->took_ns = sw->last_ns - start;
	__u64 every = set->sweep_ns;
	if (!every)
		every = 1000000000ULL;
	bpf_timer_start(&sw->timer, every, 0);
	return 0;
}

#define EBUSY_ 16
#define CLOCK_MONOTONIC_ 1

/* Arms the sweep (run once by the control plane through BPF_PROG_RUN after
 * load, and again after an Apply to pick up a new period). A timer armed
 * before (EBUSY from init) is re-pointed and restarted. */
SEC("xdp")
int fw_sweep_arm(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct fw_sweep *sw = bpf_map_lookup_elem(&fw_sweep_map, &zero);
	if (!sw)
		return XDP_ABORTED;
	long r = bpf_timer_init(&sw->timer, &fw_sweep_map, CLOCK_MONOTONIC_);
	if (r && r != -EBUSY_)
		return XDP_ABORTED;
	if (bpf_timer_set_callback(&sw->timer, sweep_cb))
		return XDP_ABORTED;
	/* The first pass soon; then every sweep_ns. */
	if (bpf_timer_start(&sw->timer, 1000000 /* 1 ms */, 0))
		return XDP_ABORTED;
	return XDP_PASS;
}

/* TC port mirroring, after the decision and before anything touches the
 * frame: sampling as in mirror_begin; a selected frame that is forwarded or
 * dropped is cloned as received to the output (bpf_clone_redirect), one
 * handed to the kernel is not (as with XDP). Every selected frame ends in
 * exactly one stats field. */
static __always_inline void tc_mirror(struct __sk_buff *skb, int v)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&fw_mirror_on, &zero);
	if (!on || !*on)
		return;
	__u32 in = skb->ingress_ifindex;
	struct fw_mirror_cfg *mc = bpf_map_lookup_elem(&fw_mirror_rules, &in);
	if (!mc)
		return;
	__u32 idx = mc->index;
	struct fw_mirror_stats *st = bpf_map_lookup_elem(&fw_mirror_counts, &idx);
	if (!st)
		return;
	st->seen += 1;
	if (mc->rate > 1) {
		if (st->countdown > 1) {
			st->countdown -= 1;
			return;
		}
		st->countdown = mc->rate;
	}
	if (!mc->up) {
		st->not_output_down += 1;
		return;
	}
	if (v == FWV_PASS) {
		st->not_passed += 1;
		return;
	}
	if (v != FWV_FWD && v != FWV_DROP) {
		st->not_other += 1;
		return;
	}
	__u32 len = skb->len;
	if (bpf_clone_redirect(skb, mc->out_ifindex, 0) == 0) {
		st->mirrored += 1;
		st->mirrored_bytes += len;
	} else {
		st->not_other += 1;
	}
}

/* Makes the headers the general path reads part of the skb's linear data
 * (the flow-cache path reads only the fixed headers, and takes the skb
 * without pulling when they are there: a TCP socket's GSO skb carries
 * just its headers in the linear part, and pulling would move payload out
 * of its pages for every aggregate). Pulls only when they are not there. */
static __always_inline void tc_pull(struct __sk_buff *skb)
{
	/* Ethernet, a VLAN tag, the largest IPv4 header, the largest TCP
	 * header (also covers an ICMP error's quote: 8 + 60 + 8 bytes). */
	const __u32 want = sizeof(struct ethhdr) + sizeof(struct vlan_hdr_) + 60 + 60;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + want <= end)
		return;
	__u32 len = skb->len;
	bpf_skb_pull_data(skb, len < want ? len : want);
}

/* The TC (clsact ingress) program: the same firewall on the skb. */
SEC("tc")
int tc_fw(struct __sk_buff *skb)
{
	struct mstate ms = {};
	return fw_main(skb, 1, &ms);
}
