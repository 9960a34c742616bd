//go:build ignore

// netlab_count counts the frames arriving on an interface of the netlab test
// lab, optionally only those matching an L4 protocol and destination port,
// and optionally drops the matched frames so a flood never reaches the stack.
// Frames that do not match always pass, so ARP and ND keep working.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

// Set by Go before load; 0 means "any".
volatile const __u8 filter_proto;
volatile const __u16 filter_dport;
volatile const __u8 drop_matched;

struct netlab_counts {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct netlab_counts);
} counts SEC(".maps");

struct netlab_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct netlab_ports {
	__be16 src;
	__be16 dst;
};

static __always_inline int matches(void *data, void *end)
{
	struct ethhdr *eth = data;
	void *l3, *l4;
	__u16 proto;
	__u8 l4proto;
	int first_fragment = 1;

	if (!filter_proto && !filter_dport)
		return 1;
	if ((void *)(eth + 1) > end)
		return 0;
	proto = eth->h_proto;
	l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		struct netlab_vlan_hdr *vh = l3;

		if ((void *)(vh + 1) > end)
			return 0;
		proto = vh->proto;
		l3 = vh + 1;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > end)
			return 0;
		l4proto = ip->protocol;
		first_fragment = !(ip->frag_off & bpf_htons(0x1fff));
		l4 = (void *)ip + ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > end)
			return 0;
		l4proto = ip6->nexthdr;
		l4 = ip6 + 1;
	} else {
		return 0;
	}
	if (filter_proto && l4proto != filter_proto)
		return 0;
	if (filter_dport) {
		struct netlab_ports *p = l4;

		if ((l4proto != IPPROTO_UDP && l4proto != IPPROTO_TCP) || !first_fragment)
			return 0;
		if ((void *)(p + 1) > end)
			return 0;
		if (p->dst != bpf_htons(filter_dport))
			return 0;
	}
	return 1;
}

SEC("xdp")
int netlab_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct netlab_counts *c;
	__u32 key = 0;

	if (!matches(data, end))
		return XDP_PASS;
	c = bpf_map_lookup_elem(&counts, &key);
	if (c) {
		c->packets++;
		c->bytes += end - data;
	}
	return drop_matched ? XDP_DROP : XDP_PASS;
}
