package flowcache

import "unsafe"

// Bytes is what New(entries) allocates, computed without allocating: the
// capability gate's memory estimate (a test compares it with New).
func Bytes(entries uint32) uint64 {
	nsets := uint64(1)
	for nsets*Ways < uint64(entries) {
		nsets <<= 1
	}
	return nsets*uint64(unsafe.Sizeof(set{})) + uint64(unsafe.Sizeof(Cache{}))
}
