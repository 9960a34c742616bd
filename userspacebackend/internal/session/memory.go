package session

import (
	"math/bits"
	"unsafe"

	"github.com/fwplane/fwplane/dataplane"
)

// Bytes is what New(capacity, shards) allocates for its slots and index
// words, computed without allocating: the capability gate's memory
// estimate. It follows New's sizing (a test compares it with New's real
// allocation).
func Bytes(capacity, shards uint32) uint64 {
	if capacity == 0 {
		capacity = dataplane.DefaultSessions
	}
	if shards == 0 {
		shards = dataplane.DefaultSessionShards
	}
	if shards&(shards-1) != 0 {
		shards = 1 << bits.Len32(shards)
	}
	for shards > capacity {
		shards >>= 1
	}
	per, extra := capacity/shards, capacity%shards
	var words uint64
	for i := range shards {
		c := per
		if i < extra {
			c++
		}
		n := uint32(8)
		for n < c+c/3+1 {
			n <<= 1
		}
		words += uint64(n)
	}
	return uint64(capacity)*uint64(unsafe.Sizeof(slot{})) + words*8 + uint64(shards)*uint64(unsafe.Sizeof(shard{}))
}
