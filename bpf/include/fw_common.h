/* Layouts shared by bpf/xdp_fw.c and the Go control plane in ebpfbackend/.
 * bpf2go generates Go types from the BTF of these structs, so a field added
 * here shows up in Go after `go generate`; keep every struct free of implicit
 * padding (explicit pad fields) so the C and Go layouts cannot drift. */
#ifndef FW_COMMON_H
#define FW_COMMON_H

#include <linux/types.h>

/* Two configuration slots: the control plane writes the inactive one fully,
 * then flips fw_active. A packet reads fw_active once and uses that slot for
 * every lookup, so it never sees half of a new policy. */
#define FW_SLOTS 2

/* Bounds the policy loop for the verifier; the control plane refuses a
 * config that needs more (ErrNotSupported). */
#define FW_MAX_RULES_PER_PAIR 256
/* Rules per slot over all zone pairs. */
#define FW_MAX_RULES 4096
/* Zone ids are 1..FW_MAX_ZONES-1; 0 means "not a managed interface". */
#define FW_MAX_ZONES 64
#define FW_MAX_IFACES 256

enum fw_action {
	FW_DENY = 0,
	FW_ALLOW = 1,
};

/* Per-CPU counters, summed in Go. Go names each counter after its constant
 * (FW_CNT_DROP_POLICY -> "drop_policy"), read from the generated code. */
enum fw_counter {
	FW_CNT_FORWARDED = 0,
	FW_CNT_PASS_NON_IP,       /* ARP and other non-IP ethertypes */
	FW_CNT_PASS_ND,           /* IPv6 neighbour discovery */
	FW_CNT_PASS_LOCAL,        /* addressed to the firewall (FIB: not forwarded) */
	FW_CNT_PASS_NO_NEIGH,     /* allowed, but the kernel must resolve the next hop */
	FW_CNT_PASS_TTL,          /* allowed, TTL/hop limit <= 1: kernel sends ICMP */
	FW_CNT_PASS_FRAG_NEEDED,  /* allowed, bigger than the egress MTU */
	FW_CNT_PASS_FWD_DISABLED, /* forwarding disabled on ingress */
	FW_CNT_PASS_UNMANAGED,    /* ingress interface is not in the active config */
	FW_CNT_DROP_POLICY,
	FW_CNT_DROP_NO_ROUTE,
	FW_CNT_DROP_PARSE,
	FW_CNT_DROP_FRAGMENT,     /* non-first fragment to forward: no ports to check */
	FW_CNT_DROP_EGRESS_UNMANAGED,
	FW_CNT_DROP_UNSUPPORTED_ROUTE,
	FW_CNT_SESSION_HIT,       /* slow path only; Go adds FW_CNT_FLOW_CACHE_HIT */
	FW_CNT_SESSION_EXPIRED,
	FW_CNT_SESSION_CREATED_V4,
	FW_CNT_SESSION_CREATED_V6,
	FW_CNT_FIB_LOOKUP,        /* bpf_fib_lookup calls (a cached hop saves one) */
	FW_CNT_FLOW_CACHE_HIT,    /* forwarded from the per-CPU flow cache */
	FW_CNT_RELATED_ICMP,      /* ICMP error quoting a live session: passed */
	FW_CNT_DROP_ICMP_UNRELATED, /* ICMP error quoting no live session */
	FW_CNT_PASS_EGRESS_NOT_XDP, /* XDP ingress, egress takes no XDP redirects: kernel forwards */
	FW_CNT_PASS_GSO_TOO_BIG,  /* TC: a GSO packet whose segments exceed the egress MTU */
	FW_CNT_SESSION_EARLY_DROP, /* unassured session evicted for a new flow */
	FW_CNT_SESSION_TABLE_FULL, /* new flow dropped: table full, no candidate */
	FW_CNT_DROP_TCP_NOT_SYN,  /* TCP without session and not a SYN */
	FW_CNT_DROP_ZONE_MISMATCH, /* session hit from an interface of another zone */
	FW_CNT_SESSION_REOPENED,  /* SYN on a closed session: ended, judged anew */
	FW_CNT_SESSION_EXPIRED_EVICTED, /* expired session evicted for a new flow */
	FW_CNT_NAT_CREATED,       /* translated sessions created */
	FW_CNT_NAT_EXHAUSTED,     /* new flow dropped: no free pool slot */
	FW_CNT_NAT_UNSUPPORTED,   /* selected for SNAT, not TCP, UDP or ICMP echo */
	FW_CNT_NAT_REVERSE_MISS,  /* to a pool address, no session */
	FW_CNT_NAT_ICMP_XLATED,   /* ICMP errors about a translated flow, translated back */
	FW_CNT_MAX,
};

/* All counters of one CPU in one value: one (inlined) lookup per packet.
 * The empty array only puts enum fw_counter into the BTF, so bpf2go
 * generates its constants and Go derives the counter names from them. */
struct fw_cpu_counters {
	__u64 c[FW_CNT_MAX];
	enum fw_counter names[0];
};

/* Protocol classes of the session model. */
enum fw_proto_class {
	FW_PC_TCP = 0,
	FW_PC_UDP,
	FW_PC_ICMP,
	FW_PC_OTHER,
	FW_PC_MAX,
};

/* Session flags (struct fw_sess_val.flags). They are only ever set, with
 * an atomic OR, never cleared: the state is a function of them
 * (fw_sess_state), so concurrent updates on several CPUs cannot
 * disagree. "Initiator" is the endpoint whose packet created the session. */
#define FW_SF_REPLY 0x01       /* a packet travelled in the reply direction */
#define FW_SF_ESTABLISHED 0x02 /* TCP: handshake completed (or picked up) */
#define FW_SF_FIN_INIT 0x04    /* TCP: FIN from the initiator */
#define FW_SF_FIN_RESP 0x08    /* TCP: FIN from the responder */
#define FW_SF_RST 0x10         /* TCP: RST from either side */
#define FW_SF_ASSURED 0x20     /* TCP: a reply left it established (sess_touch) */

/* Session states, as dataplane.SessionState numbers them. */
enum fw_sess_state {
	FW_ST_OPENING = 1,
	FW_ST_ESTABLISHED = 2,
	FW_ST_CLOSING = 3,
	FW_ST_CLOSED = 4,
	FW_ST_UNREPLIED = 5,
	FW_ST_REPLIED = 6,
};

/* Timeout slots: TCP has four states, the other classes two. */
enum fw_timeout {
	FW_TO_TCP_OPENING = 0,
	FW_TO_TCP_ESTABLISHED,
	FW_TO_TCP_CLOSING,
	FW_TO_TCP_CLOSED,
	FW_TO_UDP_UNREPLIED,
	FW_TO_UDP_REPLIED,
	FW_TO_ICMP_UNREPLIED,
	FW_TO_ICMP_REPLIED,
	FW_TO_OTHER_UNREPLIED,
	FW_TO_OTHER_REPLIED,
	FW_TO_MAX,
};

/* fw_settings.flags */
#define FW_SET_TCP_PICKUP 1 /* a non-SYN TCP packet may open a session */

struct fw_settings {
	__u64 timeout_ns[FW_TO_MAX];
	/* How long a flow-cache entry may forward without touching its
	 * session (refreshing last-seen, adding its packets), per timeout
	 * slot. Set by the control plane to a fraction of the timeout, at
	 * most FW_FIB_CACHE_NS. */
	__u64 refresh_ns[FW_TO_MAX];
	/* One jiffy in ns (the coarse clock's resolution): the cache-hit
	 * path reads jiffies, which the verifier inlines into one load. */
	__u64 tick_ns;
	/* Unassured timeouts are divided by this while early aging is on. */
	__u32 aging_div;
	__u32 flags; /* FW_SET_* */
	/* The sweep's period, and the session table size (each family). */
	__u64 sweep_ns;
	__u64 capacity;
	/* The early-drop rings' size less one (a power of two less one). */
	__u64 recent_mask;
	/* NAT rules of this slot (fw_snat_rules, fw_dnat_rules). */
	__u32 snat_n;
	__u32 dnat_n;
	/* Changes with the config's NAT rules: sessions record it with their
	 * rules' indexes, so Go names the rules of the config that made them. */
	__u32 nat_epoch;
	__u32 pad2;
};

/* NAT (IPv4). Rules are compiled by Go per slot, one entry per source
 * prefix; pools are (address list, port range), their addresses in
 * fw_nat_pool_addrs. See dataplane/nat.go for the semantics. */
#define FW_MAX_NAT_RULES 64   /* per slot and type */
#define FW_MAX_NAT_POOLS 64   /* per slot */
#define FW_MAX_POOL_ADDRS 256
#define FW_NAT_PROBES 64      /* pool slots looked at per allocation */

struct fw_nat_rule {
	__u32 src_addr; /* network order; src_mask 0: any source */
	__u32 src_mask;
	__u32 dst_addr; /* DNAT: the destination matched */
	__u32 to_addr;  /* DNAT: translated to */
	__u16 port_lo;  /* DNAT: destination ports matched, host order */
	__u16 port_hi;
	__u16 to_port;  /* DNAT: host order, 0: the port is kept */
	__u8 proto;     /* 0: tcp, udp and icmp */
	__u8 from_zone; /* 0: any (DNAT only) */
	__u8 to_zone;   /* SNAT */
	__u8 masq;      /* SNAT: the pool is the egress interface's (fw_nat_masq) */
	__u8 rule;      /* the rule's index in the config's nat list, plus one */
	__u8 pad;
	__u32 pool;     /* SNAT: pool index in the slot; masq: the rule's ordinal */
};

struct fw_nat_pool {
	__u32 naddr;
	__u16 port_lo; /* host order */
	__u16 port_hi;
};

/* A pool slot: held by one session for its life. */
struct fw_nat_port_key {
	__u32 addr; /* network order */
	__u16 port; /* network order */
	__u16 pad;
};

/* The tuple of a reply packet as it arrives (translated world). */
struct fw_nat_rev_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Per pool address and CPU: slots taken and given back. Only the datapath
 * takes and frees slots (a session Go deletes leaves its slot to the
 * sweep, which frees it as an orphan), so alloc - free summed over CPUs is
 * the slots held. */
struct fw_nat_addr_stats {
	__u64 alloc;
	__u64 free;
};

/* A session's translation: the source and destination its initiator's
 * packets leave with (0: unchanged). Network order. */
struct fw_nat_xlate {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 dnat_rule; /* fw_nat_rule.rule of the rules that made it (0: none) */
	__u8 snat_rule;
	__u16 epoch;    /* fw_settings.nat_epoch when it was made */
};

/* One expanded policy term. Addresses are in network byte order; IPv4 uses
 * word 0 only (words 1-3 and their masks are zero), so one 4-word masked
 * compare serves both families. */
struct fw_rule {
	__u32 src_addr[4];
	__u32 src_mask[4];
	__u32 dst_addr[4];
	__u32 dst_mask[4];
	__u16 port_lo; /* host byte order, inclusive */
	__u16 port_hi;
	__u8 family;   /* 0 any, 4, 6 */
	__u8 proto;    /* 0 any */
	__u8 action;   /* enum fw_action */
	__u8 pad;
};

/* Where a zone pair's rules are in fw_rules, relative to the slot base. */
struct fw_pair {
	__u32 start;
	__u32 count;
};

struct fw_if_key {
	__u32 ifindex;
	__u32 slot;
};

/* fw_if_val.flags */
#define FW_IF_XDP_TX 1 /* the device takes frames an XDP program redirects
			* into it (it advertises ndo_xdp_xmit; a veth only
			* while its peer runs NAPI) */

struct fw_if_val {
	__u32 zone;
	__u32 flags;
};

/* Session keys are canonical: the endpoint that sorts lower (address, then
 * port) is "lo". Both directions of a flow build the same key, so a flow is
 * one entry and the map's element count is the number of flows. */
struct fw_sess4_key {
	__u32 lo_addr;
	__u32 hi_addr;
	__u16 lo_port; /* network byte order */
	__u16 hi_port;
	__u8 proto;
	__u8 pad[3];
};

struct fw_sess6_key {
	__u32 lo_addr[4];
	__u32 hi_addr[4];
	__u16 lo_port;
	__u16 hi_port;
	__u8 proto;
	__u8 pad[3];
};

/* How long a session may reuse the FIB's answer for its direction before
 * asking the FIB again. New flows always ask; established flows follow a
 * route or neighbour change within this time. */
#define FW_FIB_CACHE_NS 1000000000ULL

/* The FIB's answer for one direction of a session. */
struct fw_hop {
	__u64 checked_ns; /* 0: never looked up */
	__u32 ifindex;
	__u8 smac[6];
	__u8 dmac[6];
	/* The largest IP length the FIB's MTU check accepted with this answer:
	 * a bigger packet asks the FIB again (and meets the MTU check). */
	__u16 len_ok;
	__u8 xdp_tx; /* the egress takes XDP redirects (FW_IF_XDP_TX) */
	__u8 pad[5];
};

struct fw_sess_val {
	__u64 created_ns;   /* bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC_COARSE) */
	__u64 last_seen_ns;
	__u64 packets;
	__u64 bytes;
	/* FW_SF_*, set with atomic OR only (a 64-bit OR on this 8-byte
	 * aligned word: the bits land here on little-endian). */
	__u32 flags;
	__u8 initiator_is_lo; /* 1: the lo endpoint sent the first packet */
	__u8 from_zone;       /* zone the first packet arrived from */
	__u8 to_zone;         /* zone it was routed to */
	__u8 pad;
	struct fw_hop hop[2]; /* [0]: lo -> hi, [1]: hi -> lo */
	struct fw_nat_xlate nat;
};

/* Early drop: the keys of recently created sessions, oldest first, in a
 * ring shared by every CPU (positions taken with atomic adds); a new flow
 * that finds its table full evicts the first of them (at most
 * FW_EARLY_DROP_PROBES looked at) that is unassured or expired. Assured
 * sessions are skipped, never evicted. Shared, so that new flows arriving
 * on one CPU can displace a flood that arrived on another. Go sizes the
 * rings (a power of two, fw_settings.recent_mask + 1). */
#define FW_EARLY_DROP_PROBES 8

struct fw_recent_pos {
	__u64 w[2]; /* next write, per family (0: IPv4, 1: IPv6) */
	__u64 r[2]; /* next candidate to look at */
};

/* The in-kernel sweep (a bpf_timer): removes expired sessions whether or
 * not a control process runs, counts what is left, and switches early
 * aging per family. Only the kernel writes it (its period and the table
 * size come from fw_settings); Go reads it. */
struct fw_sweep {
	struct bpf_timer timer;
	__u64 runs;
	__u64 last_ns;      /* when the last pass ended (coarse clock) */
	__u64 took_ns;      /* how long it took */
	__u64 expired;      /* sessions removed by sweeps, in total */
	__u64 used[2];      /* live sessions at the last pass, per family */
	__u64 unassured[2]; /* of them unassured */
	__u32 aging[2];     /* early aging on, per family */
};

/* Flow cache: a per-CPU, direct-mapped cache in front of the session
 * tables, keyed by the directional 5-tuple. An entry is a shortcut for a
 * live session's fresh hop, never a session of its own. */
#define FW_FLOW_CACHE_SLOTS 4096 /* power of two */

struct fw_flow_key {
	__u32 saddr[4]; /* IPv4: word 0 only */
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family; /* 4 or 6; 0: empty slot */
	__u8 pad[2];
};

struct fw_flow {
	struct fw_flow_key key;
	__u64 expire_j;  /* jiffies: valid while jiffies < expire_j */
	__u64 packets;   /* forwarded from this entry, not yet added to the session */
	__u64 bytes;
	__u32 active;    /* fw_active value it was filled under */
	__u32 ifindex;
	__u8 smac[6];
	__u8 dmac[6];
	__u16 len_ok;
	__u8 xdp_tx;     /* the egress takes XDP redirects */
	__u8 pad;
	__u32 in_ifindex; /* the packet must arrive here (session zones) */
	/* NAT: the packet leaves with these (IPv4, network order; xlate 0:
	 * no rewrite). */
	__u32 nat_saddr;
	__u32 nat_daddr;
	__u16 nat_sport;
	__u16 nat_dport;
	__u32 xlate;
	__u32 gen;       /* fw_flow_gen[slot] it was filled under */
	__u32 pad2;
};

/* Port mirroring. A rule is keyed by its ingress ifindex; stats are per
 * rule index (FW_MAX_MIRRORS) and per CPU, so the datapath takes no atomic. */
#define FW_MAX_MIRRORS FW_MAX_IFACES
/* The mirror clone restores this many leading bytes of the received frame
 * from XDP metadata (the kernel's limit for metadata is 32 bytes). Every
 * byte the primary rewrite changes (MACs, the VLAN tag it removes, TTL or
 * hop limit, IPv4 checksum) lies within them. */
#define FW_MIRROR_META 32

struct fw_mirror_cfg {
	__u32 out_ifindex;
	__u32 rate;  /* 0 and 1: every packet */
	__u32 index; /* into fw_mirror_stats */
	__u32 up;    /* output link up (IFF_UP and carrier), kept by Go */
	__u32 staged; /* hand the ingress to the mirror stage (below) */
};

/* Per CPU and rule. Every sampled packet ends in exactly one of mirrored or
 * a not_* reason; sampled-out packets are in none of them. */
struct fw_mirror_stats {
	__u64 countdown;       /* sampling: packets until the next sampled one */
	__u64 seen;            /* packets that arrived on the input */
	__u64 mirrored;        /* clones handed to the output's devmap */
	__u64 mirrored_bytes;
	__u64 not_output_down; /* output down: no clone made */
	__u64 not_passed;      /* handed to the kernel stack (XDP_PASS): not cloned */
	__u64 not_short;       /* shorter than FW_MIRROR_META, or no room for metadata */
	__u64 not_other;       /* redirect failed, frame already rewritten, no pair map */
	__u64 not_backlog;     /* the mirror stage CPU was behind: forwarded without a clone */
};

/* The mirror stage: a mirrored ingress is forwarded, and cloned, on another
 * CPU through a cpumap (xdp_fw_stage), so the clone's cost leaves the CPU
 * that received the frame. Flow control is by credit: the receiving CPU
 * counts what it handed over (fw_stage_prod, per CPU), the stage counts what
 * it took (fw_stage_done[receiving CPU], one writer), and the difference is
 * the frames in flight. */
#define FW_MAX_CPUS 256
#define FW_STAGE_QSIZE 4096 /* cpumap queue of each stage CPU */
#define FW_STAGE_CLONE_LIMIT (FW_STAGE_QSIZE / 2) /* in flight above: no clones */
#define FW_STAGE_LIMIT (FW_STAGE_QSIZE * 3 / 4) /* in flight above: forward here */

/* Per receiving CPU. Frames handed over are never forgotten by the
 * datapath: a stage that is slow (or starved of CPU) keeps them counted in
 * flight, so the queue cannot overflow. Only Go writes frames off, when it
 * creates the queues afresh (setupStage). */
struct fw_stage_prod {
	__u64 sent;    /* frames handed to the stage */
	__u64 lost;    /* frames written off by Go when the queues were made again */
	__u64 inline_; /* frames forwarded here because the stage was behind */
	__u32 credit;  /* frames that may go before the next look at the stage */
	__u32 mode;    /* FW_STAGE_* for those frames */
};

/* Per receiving CPU, written by its stage CPU only; one cache line each. */
struct fw_stage_done {
	__u64 done;
	__u64 pad[7];
};

#define FW_STAGE_CLONE 1 /* hand over, cloning selected frames */
#define FW_STAGE_FWD 2   /* hand over, no clones */
#define FW_STAGE_INLINE 3

/* XDP metadata of a frame handed to the stage. */
struct fw_stage_meta {
	__u16 src_cpu;
	__u16 clone;   /* selected for a clone */
	__u32 index;   /* the rule's stats index */
};

/* The kernel's struct bpf_devmap_val (ifindex, then a program fd on update,
 * its id on lookup), spelled out so that its BTF is complete. */
struct fw_devmap_val {
	__u32 ifindex;
	__u32 prog;
};

/* Key of fw_mirror_pairs: the broadcast devmap for one (egress, output). */
struct fw_pair_key {
	__u32 egress;
	__u32 output;
};

#endif /* FW_COMMON_H */
