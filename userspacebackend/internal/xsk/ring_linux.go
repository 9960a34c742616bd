package xsk

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is one mmapped AF_XDP ring. The kernel and this process share the
// producer and consumer words. asavie/xdp reads and writes them as plain
// memory with its fences commented out, which is only correct on x86 (TSO)
// and only as long as the Go compiler does not reorder or cache the
// accesses; here every shared index goes through sync/atomic, whose
// sequentially consistent loads and stores give the acquire (read the
// producer, then the descriptors) and release (write the descriptors, then
// the producer) ordering the kernel's smp_load_acquire/smp_store_release
// pair expects, on every architecture.
type ring struct {
	mem        []byte // the whole mapping, for munmap
	prod, cons *uint32
	flags      *uint32
	desc       unsafe.Pointer
	size, mask uint32
	local      uint32 // our side's index (producer or consumer), mirrors *prod or *cons
}

func mapRing(fd int, pgoff int64, off unix.XDPRingOffset, size uint32, descSize uintptr) (ring, error) {
	length := int(off.Desc) + int(size)*int(descSize)
	mem, err := unix.Mmap(fd, pgoff, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return ring{}, fmt.Errorf("mmap ring at %#x: %w", pgoff, err)
	}
	base := unsafe.Pointer(&mem[0])
	return ring{
		mem:   mem,
		prod:  (*uint32)(unsafe.Add(base, off.Producer)),
		cons:  (*uint32)(unsafe.Add(base, off.Consumer)),
		flags: (*uint32)(unsafe.Add(base, off.Flags)),
		desc:  unsafe.Add(base, off.Desc),
		size:  size,
		mask:  size - 1,
	}, nil
}

func (r *ring) unmap() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	*r = ring{}
	return err
}

func (r *ring) addrs() []uint64 { return unsafe.Slice((*uint64)(r.desc), r.size) }
func (r *ring) descs() []Desc   { return unsafe.Slice((*Desc)(r.desc), r.size) }

// needWakeup reports the kernel's XDP_RING_NEED_WAKEUP flag.
func (r *ring) needWakeup() bool { return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0 }

// Producer side (fill, TX): we own prod.

func (r *ring) freeSlots() uint32 { return r.size - (r.local - atomic.LoadUint32(r.cons)) }
func (r *ring) publish()          { atomic.StoreUint32(r.prod, r.local) }

// Consumer side (RX, completion): we own cons.

func (r *ring) available() uint32 { return atomic.LoadUint32(r.prod) - r.local }
func (r *ring) release()          { atomic.StoreUint32(r.cons, r.local) }

// RingStats is a ring's producer and consumer index and its size.
// Depth = Producer - Consumer entries are queued.
type RingStats struct {
	Size, Producer, Consumer uint32
}

// Depth is the number of entries queued in the ring.
func (s RingStats) Depth() uint32 { return s.Producer - s.Consumer }

func (r *ring) stats() RingStats {
	if r.mem == nil {
		return RingStats{}
	}
	return RingStats{Size: r.size, Producer: atomic.LoadUint32(r.prod), Consumer: atomic.LoadUint32(r.cons)}
}
