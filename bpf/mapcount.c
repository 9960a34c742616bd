//go:build ignore

/* One pass of an iter/bpf_map program reports, for every map on the system,
 * the element count the kernel keeps for it (bpf_map_sum_elem_count, kernel
 * >= 6.6). The Go side (internal/mapcount) reads the seq file in one go.
 *
 * Only the few kernel structs we touch are declared, with
 * preserve_access_index so libbpf-style CO-RE relocates them against the
 * running kernel's BTF: no vmlinux.h. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct seq_file;

struct bpf_map {
	__u32 id;
} __attribute__((preserve_access_index));

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__bpf_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
} __attribute__((preserve_access_index));

extern __s64 bpf_map_sum_elem_count(const struct bpf_map *map) __ksym;

/* Binary record, 16 bytes: parsing fixed-size records is cheaper than text,
 * and the explicit pad keeps the C and Go layouts identical. */
struct mapcount_rec {
	__u32 id;
	__u32 pad;
	__s64 count;
};

SEC("iter/bpf_map")
int mapcount_iter(struct bpf_iter__bpf_map *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct bpf_map *map = ctx->map;
	struct mapcount_rec rec = {};

	/* The iterator calls once more with map == NULL after the last map. */
	if (!map)
		return 0;

	rec.id = map->id;
	rec.count = bpf_map_sum_elem_count(map);
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}

/* bpf_seq_write is GPL-only. */
char LICENSE[] SEC("license") = "GPL";
