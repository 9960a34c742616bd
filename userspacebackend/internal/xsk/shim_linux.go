package xsk

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
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
	cntDropHeartbeatStale
	numShimCounters
)

// ShimCounters are the shim's verdicts summed over CPUs since it was loaded.
type ShimCounters struct {
	Redirected   uint64 // handed to a ready AF_XDP socket
	PassNonIP    uint64 // ARP and other non-IP frames given to the kernel
	PassND       uint64 // IPv6 neighbour discovery given to the kernel
	PassLocal    uint64 // addressed to one of the firewall's own addresses
	DropNoSocket uint64 // IP frame on a queue without a ready socket
	// DropHeartbeatStale: transit frame on a queue whose worker had not
	// beaten within the heartbeat limit (its process died or is stuck).
	DropHeartbeatStale uint64
}

// ShimOptions tunes LoadShim; nil means defaults.
type ShimOptions struct {
	// MaxQueues bounds the queue ids the shim serves (XSKMAP and ready
	// sizes); frames on higher queues are dropped as "no socket".
	// 0 means 64.
	MaxQueues uint32
	// ForceGeneric skips native mode (tests, drivers with broken native XDP).
	ForceGeneric bool
	// PinDir, when set, is a bpffs directory of this shim's own (one per
	// interface) where LoadShim pins its maps and its bpf_link, so the
	// shim stays attached, dropping transit frames, when the process dies;
	// AdoptShim takes it over. Empty: nothing pinned, the shim leaves with
	// the process.
	PinDir string
	// HeartbeatLimit is how old a queue's heartbeat ([Shim.Beat]) may be
	// before the shim drops its transit frames (drop_heartbeat_stale); 0
	// turns the check off.
	HeartbeatLimit time.Duration
}

// Shim is the XDP program that steers an interface's frames to AF_XDP
// sockets, attached through a bpf_link that never silently replaces
// another program. Unpinned, it disappears when the process dies; pinned
// (ShimOptions.PinDir) it stays and fails closed (see the package doc).
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
	// heartbeats is a read-write mapping of the heartbeat map: one
	// 64-byte element per queue (nq of them).
	heartbeats []byte
	// pinDir is where the shim is pinned ("" = not pinned).
	pinDir string
}

// counterStride is the size of one CPU's counters (struct
// xsk_cpu_counters): a cache line, so CPUs never share one.
const counterStride = 64

// LoadShim loads the shim and attaches it to ifindex, in the calling
// thread's network namespace. Native mode is tried first; the mode used is
// reported by Mode. Attaching fails (does not replace) when another XDP
// program is already attached. With opts.PinDir the maps and the link are
// pinned there; the directory must hold no shim (use AdoptShim), and a
// failure removes what was pinned.
func LoadShim(ifindex int, opts *ShimOptions) (_ *Shim, err error) {
	o, err := resolveShim(opts)
	if err != nil {
		return nil, err
	}
	if o.PinDir != "" && hasPinnedShim(o.PinDir) {
		return nil, fmt.Errorf("load shim: %s already holds a pinned shim (adopt it): %w", o.PinDir, ErrInvalidOptions)
	}
	s, err := loadShimObjects(ifindex, o)
	if err != nil {
		if o.PinDir != "" {
			_ = RemovePinnedShim(o.PinDir)
		}
		return nil, err
	}
	defer func() {
		if err != nil {
			s.unmap()
			s.objs.Close()
			if o.PinDir != "" {
				_ = RemovePinnedShim(o.PinDir)
			}
		}
	}()

	var nativeErr error
	if !o.ForceGeneric {
		s.link, nativeErr = link.AttachXDP(link.XDPOptions{Program: s.objs.XskShim, Interface: ifindex, Flags: link.XDPDriverMode})
		s.mode = AttachNative
	}
	if s.link == nil {
		var err error
		s.link, err = link.AttachXDP(link.XDPOptions{Program: s.objs.XskShim, Interface: ifindex, Flags: link.XDPGenericMode})
		if err != nil {
			return nil, fmt.Errorf("attach shim to ifindex %d: %w", ifindex, errors.Join(nativeErr, err))
		}
		s.mode = AttachGeneric
		s.nativeErr = nativeErr
	}
	if o.PinDir != "" {
		if err := s.link.Pin(linkPinPath(o.PinDir)); err != nil {
			s.link.Close()
			return nil, fmt.Errorf("pin shim link: %w", err)
		}
	}
	return s, nil
}

func resolveShim(opts *ShimOptions) (ShimOptions, error) {
	var o ShimOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxQueues == 0 {
		o.MaxQueues = 64
	}
	if o.HeartbeatLimit < 0 {
		return o, fmt.Errorf("heartbeat limit %v: want >= 0: %w", o.HeartbeatLimit, ErrInvalidOptions)
	}
	return o, nil
}

// shimSpec is the shim's collection spec sized for o: the queue maps for
// MaxQueues, the counters for the possible CPUs, every map pinned by name
// when o.PinDir is set.
func shimSpec(o ShimOptions) (*ebpf.CollectionSpec, int, error) {
	spec, err := loadXskShim()
	if err != nil {
		return nil, 0, fmt.Errorf("load shim spec: %w", err)
	}
	spec.Maps["xsks"].MaxEntries = o.MaxQueues
	spec.Maps["ready"].MaxEntries = o.MaxQueues
	spec.Maps["heartbeat"].MaxEntries = o.MaxQueues
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, 0, fmt.Errorf("count possible CPUs: %w", err)
	}
	spec.Maps["counters"].MaxEntries = uint32(ncpu)
	if o.PinDir != "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
	}
	return spec, ncpu, nil
}

// loadShimObjects loads the program and its maps (creating or, pinned,
// opening them), maps the counters and heartbeats and writes the config.
// Nothing is attached.
func loadShimObjects(ifindex int, o ShimOptions) (*Shim, error) {
	spec, ncpu, err := shimSpec(o)
	if err != nil {
		return nil, err
	}
	if o.PinDir != "" {
		if err := os.MkdirAll(o.PinDir, 0o700); err != nil {
			return nil, fmt.Errorf("make shim pin directory: %w", err)
		}
	}
	var objs xskShimObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: o.PinDir}}); err != nil {
		if herr := features.HaveProgramHelper(ebpf.XDP, asm.FnKtimeGetCoarseNs); errors.Is(herr, ebpf.ErrNotSupported) {
			return nil, fmt.Errorf("load shim: its heartbeat check needs bpf_ktime_get_coarse_ns (kernel >= 5.11): %w: %w", dataplane.ErrNotSupported, herr)
		}
		if o.PinDir != "" {
			return nil, fmt.Errorf("load shim over the maps pinned in %s: %w: %w", o.PinDir, ErrIncompatiblePin, err)
		}
		return nil, fmt.Errorf("load shim: %w", err)
	}
	s := &Shim{ifindex: ifindex, nq: o.MaxQueues, objs: &objs, ncpu: ncpu, pinDir: o.PinDir,
		queues: map[uint32]bool{}, local: map[xskShimXskLocalKey]bool{}, nat: map[xskShimXskLocalKey]uint8{}}
	if err := s.mapMemory(); err != nil {
		objs.Close()
		return nil, err
	}
	if err := s.setHeartbeatLimit(o.HeartbeatLimit); err != nil {
		s.unmap()
		objs.Close()
		return nil, err
	}
	return s, nil
}

// mapMemory maps the counters (read-only) and the heartbeats
// (read-write). The kernel rounds a mapping of an mmapable array up to
// pages.
func (s *Shim) mapMemory() error {
	page := unix.Getpagesize()
	round := func(n int) int { return (n + page - 1) &^ (page - 1) }
	var err error
	s.counters, err = unix.Mmap(s.objs.Counters.FD(), 0, round(s.ncpu*counterStride), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map shim counters: %w", err)
	}
	s.heartbeats, err = unix.Mmap(s.objs.Heartbeat.FD(), 0, round(int(s.nq)*heartbeatStride), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		_ = unix.Munmap(s.counters)
		s.counters = nil
		return fmt.Errorf("map shim heartbeats: %w", err)
	}
	return nil
}

func (s *Shim) unmap() error {
	var err error
	if s.counters != nil {
		err = unix.Munmap(s.counters)
		s.counters = nil
	}
	if s.heartbeats != nil {
		err = errors.Join(err, unix.Munmap(s.heartbeats))
		s.heartbeats = nil
	}
	return err
}

func (s *Shim) setHeartbeatLimit(d time.Duration) error {
	if err := s.objs.Conf.Update(uint32(0), xskShimXskConf{HeartbeatLimitNs: uint64(d.Nanoseconds())}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set the shim's heartbeat limit: %w", err)
	}
	return nil
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

// heartbeatStride is the size of one queue's heartbeat (struct
// xsk_heartbeat): a cache line, so two workers never write the same one.
const heartbeatStride = 64

// Beat records that queue's worker is making progress: the shim forwards
// the queue's transit frames only while its last beat is younger than the
// heartbeat limit. It writes CLOCK_MONOTONIC (bpf_ktime_get_ns's clock)
// into the mapped heartbeat map: no BPF system call. A closed shim or a
// queue out of range is ignored.
func (s *Shim) Beat(queue uint32) {
	var ts unix.Timespec
	// x/sys has no vDSO clock_gettime: a system call, made a few times
	// per limit by each worker, not per packet.
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.heartbeats == nil || queue >= s.nq {
		return
	}
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&s.heartbeats[int(queue)*heartbeatStride])), uint64(ts.Nano()))
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

		DropHeartbeatStale: sums[cntDropHeartbeatStale],
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

// Close detaches the shim and frees its maps; a pinned shim's pins and
// directory are removed first, so closing detaches it. Bindings registered
// with it should be closed first; their later Close skips the (gone) map
// updates. Close is safe on nil and idempotent.
func (s *Shim) Close() error {
	return s.shutdown(false)
}

// Release closes this process's handles on a pinned shim and leaves it
// attached with its maps: its sockets' queues drop IP frames (no socket,
// then a stale heartbeat) until a process adopts it. Without a pin
// directory Release is Close. Safe on nil and idempotent.
func (s *Shim) Release() error {
	return s.shutdown(s != nil && s.pinDir != "")
}

// Pinned reports whether the shim is pinned (ShimOptions.PinDir).
func (s *Shim) Pinned() bool { return s.pinDir != "" }

func (s *Shim) shutdown(keepPins bool) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objs == nil {
		return nil
	}
	var err error
	if s.pinDir != "" && !keepPins {
		err = RemovePinnedShim(s.pinDir)
	}
	if s.link != nil {
		if lerr := s.link.Close(); lerr != nil {
			err = errors.Join(err, fmt.Errorf("detach shim: %w", lerr))
		}
	}
	err = errors.Join(err, s.unmap(), s.objs.Close())
	s.objs = nil
	s.queues = nil
	return err
}
