package neigh

import "unsafe"

// Bytes is what a table of capacity entries with the default shards
// allocates for its slots, computed without allocating: the capability
// gate's memory estimate (a test compares it with the real table).
func Bytes(capacity uint32) uint64 {
	shards := DefaultShards
	for shards > 1 && uint32(shards) > capacity {
		shards >>= 1
	}
	per, extra := uint64(capacity)/uint64(shards), uint64(capacity)%uint64(shards)
	var slots uint64
	for i := range uint64(shards) {
		c := per
		if i < extra {
			c++
		}
		n := uint64(1)
		for n < c*4/3+1 {
			n <<= 1
		}
		slots += n
	}
	return slots*uint64(unsafe.Sizeof(slot{})) + uint64(shards)*uint64(unsafe.Sizeof(shard{}))
}
