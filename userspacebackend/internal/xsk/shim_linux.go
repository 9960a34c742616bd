package xsk

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// AttachMode is how the kernel runs the shim on an interface.
type AttachMode int

const (
	// AttachNative runs the shim in the driver (veth supports it).
	AttachNative AttachMode = iota + 1
	// AttachGeneric runs it on the skb path: slower, and AF_XDP then always
	// copies frames. Used only when the driver refuses native mode.
	AttachGeneric
)

func (m AttachMode) String() string {
	switch m {
	case AttachNative:
		return "native"
	case AttachGeneric:
		return "generic"
	}
	return "unknown"
}

// Shim counter indexes; they mirror enum xsk_counter in bpf/xsk_shim.c.
const (
	cntRedirected = iota
	cntPassNonIP
	cntPassND
	cntPassLocal
	cntDropNoSocket
	numShimCounters
)

// ShimCounters are the shim's verdicts summed over CPUs since it was loaded.
type ShimCounters struct {
	Redirected   uint64 // handed to a ready AF_XDP socket
	PassNonIP    uint64 // ARP and other non-IP frames given to the kernel
	PassND       uint64 // IPv6 neighbour discovery given to the kernel
	PassLocal    uint64 // addressed to one of the firewall's own addresses
	DropNoSocket uint64 // IP frame on a queue without a ready socket
}

// ShimOptions tunes LoadShim; nil means defaults.
type ShimOptions struct {
	// MaxQueues bounds the queue ids the shim serves (XSKMAP and ready
	// sizes); frames on higher queues are dropped as "no socket".
	// 0 means 64.
	MaxQueues uint32
	// ForceGeneric skips native mode (tests, drivers with broken native XDP).
	ForceGeneric bool
}

// Shim is the XDP program that steers an interface's frames to AF_XDP
// sockets, attached through a bpf_link so that it disappears when the
// process dies and never silently replaces another program.
//
// A Shim is safe for concurrent use.
type Shim struct {
	ifindex int
	mode    AttachMode
	// nativeErr is why native mode failed, when it was tried and failed.
	nativeErr error
	nq        uint32

	mu     sync.Mutex // serialises map programming and Close
	objs   *xskShimObjects
	link   link.Link
	queues map[uint32]bool
	local  map[xskShimXskLocalKey]bool
	nat    map[xskShimXskLocalKey]uint8

	// counters is a read-only mapping of the shim's counters map: one
	// 64-byte element per possible CPU (ncpu of them).
	counters []byte
	ncpu     int
}

// counterStride is the size of one CPU's counters (struct
// xsk_cpu_counters): a cache line, so CPUs never share one.
const counterStride = 64

// LoadShim loads the shim and attaches it to ifindex, in the calling
// thread's network namespace. Native mode is tried first; the mode used is
// reported by Mode. Attaching fails (does not replace) when another XDP
// program is already attached.
func LoadShim(ifindex int, opts *ShimOptions) (*Shim, error) {
	var o ShimOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxQueues == 0 {
		o.MaxQueues = 64
	}
	spec, err := loadXskShim()
	if err != nil {
		return nil, fmt.Errorf("load shim spec: %w", err)
	}
	spec.Maps["xsks"].MaxEntries = o.MaxQueues
	spec.Maps["ready"].MaxEntries = o.MaxQueues
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	spec.Maps["counters"].MaxEntries = uint32(ncpu)
	var objs xskShimObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("load shim: %w", err)
	}
	s := &Shim{ifindex: ifindex, nq: o.MaxQueues, objs: &objs, ncpu: ncpu,
		queues: map[uint32]bool{}, local: map[xskShimXskLocalKey]bool{}, nat: map[xskShimXskLocalKey]uint8{}}
	// The kernel rounds the mapping of an mmapable array up to pages.
	size := (ncpu*counterStride + unix.Getpagesize() - 1) &^ (unix.Getpagesize() - 1)
	s.counters, err = unix.Mmap(objs.Counters.FD(), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		objs.Close()
		return nil, fmt.Errorf("map shim counters: %w", err)
	}

	var nativeErr error
	if !o.ForceGeneric {
		s.link, nativeErr = link.AttachXDP(link.XDPOptions{Program: objs.XskShim, Interface: ifindex, Flags: link.XDPDriverMode})
		s.mode = AttachNative
	}
	if s.link == nil {
		var err error
		s.link, err = link.AttachXDP(link.XDPOptions{Program: objs.XskShim, Interface: ifindex, Flags: link.XDPGenericMode})
		if err != nil {
			_ = unix.Munmap(s.counters)
			objs.Close()
			return nil, fmt.Errorf("attach shim to ifindex %d: %w", ifindex, errors.Join(nativeErr, err))
		}
		s.mode = AttachGeneric
		s.nativeErr = nativeErr
	}
	return s, nil
}

// NativeError is why native mode failed when the shim runs in generic
// mode after trying it (e.g. a veth whose peer's MTU is too large for an
// XDP program without multi-buffer support); nil otherwise.
func (s *Shim) NativeError() error { return s.nativeErr }

// Ifindex is the interface the shim is attached to.
func (s *Shim) Ifindex() int { return s.ifindex }

// Mode reports whether the shim runs natively or in generic mode.
func (s *Shim) Mode() AttachMode { return s.mode }

// ProgramID is the kernel id of the attached program (for diagnostics).
func (s *Shim) ProgramID() (ebpf.ProgramID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return 0, ErrClosed
	}
	info, err := s.objs.XskShim.Info()
	if err != nil {
		return 0, fmt.Errorf("read shim info: %w", err)
	}
	id, _ := info.ID()
	return id, nil
}

// attachSocket publishes fd for queue: the XSKMAP entry first, the ready
// flag last, so the shim never redirects to a socket that is not bound with
// a primed fill ring.
func (s *Shim) attachSocket(queue uint32, fd int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return ErrClosed
	}
	if queue >= s.nq {
		return fmt.Errorf("register queue %d: shim serves queues < %d: %w", queue, s.nq, ErrInvalidOptions)
	}
	if s.queues[queue] {
		return fmt.Errorf("register queue %d: %w", queue, ErrQueueTaken)
	}
	if err := s.objs.Xsks.Update(queue, uint32(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("insert socket into xskmap: %w", err)
	}
	if err := s.objs.Ready.Update(queue, uint32(1), ebpf.UpdateAny); err != nil {
		_ = s.objs.Xsks.Delete(queue)
		return fmt.Errorf("set ready flag: %w", err)
	}
	s.queues[queue] = true
	return nil
}

// detachSocket clears the ready flag first, then the XSKMAP entry, before
// the socket closes: frames arriving meanwhile are dropped (fail closed).
func (s *Shim) detachSocket(queue uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil || !s.queues[queue] {
		return nil
	}
	delete(s.queues, queue)
	err := s.objs.Ready.Update(queue, uint32(0), ebpf.UpdateAny)
	if derr := s.objs.Xsks.Delete(queue); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) {
		err = errors.Join(err, derr)
	}
	if err != nil {
		return fmt.Errorf("unregister queue %d: %w", queue, err)
	}
	return nil
}

// localKey stores IPv4 as v4-mapped IPv6 (As16 does exactly that), the
// layout the shim builds from an IPv4 header.
func localKey(a netip.Addr) xskShimXskLocalKey {
	return xskShimXskLocalKey{Addr: a.As16()}
}

// SetLocalAddrs replaces the set of the firewall's own addresses: IP frames
// to them go to the kernel (pass_local) instead of the dataplane. IPv4 and
// IPv4-mapped IPv6 addresses are the same entry.
func (s *Shim) SetLocalAddrs(addrs []netip.Addr) error {
	want := map[xskShimXskLocalKey]bool{}
	for _, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("set local addresses: invalid address: %w", ErrInvalidOptions)
		}
		want[localKey(a)] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return ErrClosed
	}
	one := uint8(1)
	for k := range want {
		if !s.local[k] {
			if err := s.objs.LocalAddrs.Update(k, one, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("set local address: %w", err)
			}
			s.local[k] = true
		}
	}
	for k := range s.local {
		if !want[k] {
			if err := s.objs.LocalAddrs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete local address: %w", err)
			}
			delete(s.local, k)
		}
	}
	return nil
}

// SetNATAddrs replaces the set of NAT addresses that are also the
// firewall's own, with their steering flags (bpf/xsk_shim.c, "Address
// translation": 0x01 replies of source NAT, 0x02 ICMP echo requests of
// destination NAT, 0x04 every protocol of destination NAT). A frame to one
// of them goes to the AF_XDP socket unless a local socket owns it; without
// an entry, frames to a local address go to the kernel. Only addresses in
// the local set (SetLocalAddrs) are looked up. At most 256 entries.
func (s *Shim) SetNATAddrs(addrs map[netip.Addr]uint8) error {
	want := make(map[xskShimXskLocalKey]uint8, len(addrs))
	for a, f := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("set NAT addresses: invalid address: %w", ErrInvalidOptions)
		}
		want[localKey(a)] = f
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return ErrClosed
	}
	for k, f := range want {
		if old, ok := s.nat[k]; !ok || old != f {
			if err := s.objs.NatAddrs.Update(k, f, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("set NAT address: %w", err)
			}
			s.nat[k] = f
		}
	}
	for k := range s.nat {
		if _, ok := want[k]; !ok {
			if err := s.objs.NatAddrs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete NAT address: %w", err)
			}
			delete(s.nat, k)
		}
	}
	return nil
}

// Counters sums the shim's per-CPU counters.
func (s *Shim) Counters() (ShimCounters, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return ShimCounters{}, ErrClosed
	}
	sums, err := s.readCounters()
	if err != nil {
		return ShimCounters{}, err
	}
	return ShimCounters{
		Redirected:   sums[cntRedirected],
		PassNonIP:    sums[cntPassNonIP],
		PassND:       sums[cntPassND],
		PassLocal:    sums[cntPassLocal],
		DropNoSocket: sums[cntDropNoSocket],
	}, nil
}

// readCounters sums every CPU's counters from the mapping: plain memory
// reads, no system call. Each value is one aligned 64-bit word the program
// increments in place, read atomically. s.mu is held.
func (s *Shim) readCounters() ([numShimCounters]uint64, error) {
	var sums [numShimCounters]uint64
	for c := range s.ncpu {
		base := unsafe.Pointer(&s.counters[c*counterStride])
		for i := range numShimCounters {
			sums[i] += atomic.LoadUint64((*uint64)(unsafe.Add(base, i*8)))
		}
	}
	return sums, nil
}

// Close detaches the shim and frees its maps. Bindings registered with it
// should be closed first; their later Close skips the (gone) map updates.
// Close is safe on nil and idempotent.
func (s *Shim) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return nil
	}
	var err error
	if s.link != nil {
		if lerr := s.link.Close(); lerr != nil {
			err = fmt.Errorf("detach shim: %w", lerr)
		}
	}
	if s.counters != nil {
		err = errors.Join(err, unix.Munmap(s.counters))
		s.counters = nil
	}
	err = errors.Join(err, s.objs.Close())
	s.objs = nil
	s.queues = nil
	return err
}
