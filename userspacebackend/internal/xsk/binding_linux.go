package xsk

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Desc is an AF_XDP descriptor (struct xdp_desc): the UMEM address of a
// frame's first byte and its length.
type Desc struct {
	Addr    uint64
	Len     uint32
	Options uint32
}

// Binding is one AF_XDP socket with its own UMEM, bound to one (interface,
// queue). See the package documentation for its concurrency contract.
type Binding struct {
	ifindex, queue int
	o              resolved
	shim           *Shim
	zeroCopy       bool
	needWakeup     bool
	bindRetries    int

	// closeMu orders Close (writer) against Stats, Kick, TXPending and
	// TXConsumed (readers) so the rings are never unmapped under a reader.
	// The rest of the datapath never takes it.
	closeMu sync.RWMutex
	closed  atomic.Bool
	fd      int
	umem    []byte

	fill, rx, tx, comp ring

	// Datapath-only state (the worker goroutine).
	freeStack []uint64 // frame base addresses
	// mirrorStack is the mirror pool's free frames: the last o.mirror
	// frames of the UMEM, which only AllocMirror hands out.
	mirrorStack []uint64
	mirrorStart uint32 // index of the first mirror frame
	mirrorFree  atomic.Uint32
	state       []uint8 // per frame, for ownership checks
	ledger      ledger

	// Cumulative counters, readable concurrently.
	received, transmitted, completed, kicks, kickErrs, badDescs atomic.Uint64
}

// Open creates an AF_XDP socket with its UMEM and rings, binds it to queue
// of ifindex (in the calling thread's network namespace), primes the fill
// ring, and, if opts.Shim is set, publishes the socket to the shim.
func Open(ifindex, queue int, opts *Options) (_ *Binding, err error) {
	o, err := resolve(opts)
	if err != nil {
		return nil, err
	}
	if ifindex <= 0 || queue < 0 {
		return nil, fmt.Errorf("open ifindex %d queue %d: %w", ifindex, queue, ErrInvalidOptions)
	}
	b := &Binding{ifindex: ifindex, queue: queue, o: o, fd: -1}
	if opts != nil && opts.Shim != nil {
		if opts.Shim.Ifindex() != ifindex {
			return nil, fmt.Errorf("open binding on ifindex %d with a shim on ifindex %d: %w", ifindex, opts.Shim.Ifindex(), ErrInvalidOptions)
		}
		b.shim = opts.Shim
	}
	defer func() {
		if err != nil {
			b.teardown()
		}
	}()

	// asavie/xdp's NewSocket is not used for any of this: its Close never
	// unmaps the four ring mappings, and each mapping holds a reference to
	// the socket file, so the socket stays bound to the queue until the
	// process exits (every later bind on that queue fails with EBUSY; see
	// TestAsavieCloseLeavesQueueBound). It also binds with package-global
	// flags and wraps errors with %v, so EBUSY cannot be told apart.
	b.fd, err = unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create xdp socket: %w", err)
	}
	b.umem, err = unix.Mmap(-1, 0, int(o.frames)*int(o.frameSize), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap umem: %w", err)
	}
	reg := unix.XDPUmemReg{Addr: uint64(uintptr(unsafe.Pointer(&b.umem[0]))), Len: uint64(len(b.umem)), Size: o.frameSize}
	if err := setsockopt(b.fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		if errors.Is(err, unix.ENOBUFS) {
			// The kernel pins UMEM pages and charges them to
			// RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
			var lim unix.Rlimit
			_ = unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim)
			return nil, fmt.Errorf("register umem of %d bytes: %w: pinned memory exceeds RLIMIT_MEMLOCK (%d bytes): needs CAP_IPC_LOCK or a higher memlock limit",
				len(b.umem), err, lim.Cur)
		}
		return nil, fmt.Errorf("register umem: %w", err)
	}
	for _, r := range []struct {
		opt  int
		size uint32
	}{{unix.XDP_UMEM_FILL_RING, o.fill}, {unix.XDP_UMEM_COMPLETION_RING, o.comp}, {unix.XDP_RX_RING, o.rx}, {unix.XDP_TX_RING, o.tx}} {
		if err := unix.SetsockoptInt(b.fd, unix.SOL_XDP, r.opt, int(r.size)); err != nil {
			return nil, fmt.Errorf("size ring (opt %d): %w", r.opt, err)
		}
	}
	if o.txBudget > 0 {
		if err := unix.SetsockoptInt(b.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, int(o.txBudget)); err != nil {
			return nil, fmt.Errorf("set tx budget: %w", err)
		}
	}
	var off unix.XDPMmapOffsets
	if err := getsockopt(b.fd, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), unsafe.Sizeof(off)); err != nil {
		return nil, fmt.Errorf("read ring offsets: %w", err)
	}
	if b.fill, err = mapRing(b.fd, unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, o.fill, 8); err != nil {
		return nil, err
	}
	if b.comp, err = mapRing(b.fd, unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, o.comp, 8); err != nil {
		return nil, err
	}
	if b.rx, err = mapRing(b.fd, unix.XDP_PGOFF_RX_RING, off.Rx, o.rx, unsafe.Sizeof(Desc{})); err != nil {
		return nil, err
	}
	if b.tx, err = mapRing(b.fd, unix.XDP_PGOFF_TX_RING, off.Tx, o.tx, unsafe.Sizeof(Desc{})); err != nil {
		return nil, err
	}

	if err := b.bind(); err != nil {
		return nil, err
	}
	var xo struct{ Flags uint32 } // struct xdp_options; x/sys has no type for it
	if getsockopt(b.fd, unix.XDP_OPTIONS, unsafe.Pointer(&xo), unsafe.Sizeof(xo)) == nil {
		b.zeroCopy = xo.Flags&unix.XDP_OPTIONS_ZEROCOPY != 0
	}

	// Every frame starts free, then the fill ring is primed, so the shim
	// never sees a ready socket that has nowhere to put a frame.
	b.state = make([]uint8, o.frames)
	b.mirrorStart = o.frames - o.mirror
	b.freeStack = make([]uint64, 0, b.mirrorStart)
	for i := int(b.mirrorStart) - 1; i >= 0; i-- {
		b.freeStack = append(b.freeStack, uint64(i)*uint64(o.frameSize))
	}
	b.mirrorStack = make([]uint64, 0, o.mirror)
	for i := int(o.frames) - 1; i >= int(b.mirrorStart); i-- {
		b.mirrorStack = append(b.mirrorStack, uint64(i)*uint64(o.frameSize))
	}
	b.mirrorFree.Store(o.mirror)
	b.ledger.counts[stFree].Store(o.frames)
	b.Refill()

	if b.shim != nil {
		if err := b.shim.attachSocket(uint32(queue), b.fd); err != nil {
			b.shim = nil // not registered: teardown must not unregister another binding
			return nil, err
		}
	}
	return b, nil
}

// bind retries EBUSY with capped exponential backoff: the kernel releases a
// closed socket's hold on the queue asynchronously, so a rebind right after
// Close (a restart, a link flap) can briefly find the queue busy.
func (b *Binding) bind() error {
	flags := uint16(0)
	if b.o.needWakeup {
		flags |= unix.XDP_USE_NEED_WAKEUP
	}
	if b.o.copy {
		flags |= unix.XDP_COPY
	}
	deadline := time.Now().Add(b.o.bindTimeout)
	wait := time.Millisecond
	for {
		err := unix.Bind(b.fd, &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(b.ifindex), QueueID: uint32(b.queue)})
		switch {
		case err == nil:
			b.needWakeup = flags&unix.XDP_USE_NEED_WAKEUP != 0
			return nil
		case errors.Is(err, unix.EINVAL) && flags&unix.XDP_USE_NEED_WAKEUP != 0:
			// Kernels before 5.4 reject the flag: kick on every transmit.
			flags &^= unix.XDP_USE_NEED_WAKEUP
			continue
		case errors.Is(err, unix.EBUSY) && time.Now().Before(deadline):
			b.bindRetries++
			time.Sleep(wait)
			wait = min(2*wait, 100*time.Millisecond)
			continue
		case errors.Is(err, unix.EBUSY):
			return fmt.Errorf("bind ifindex %d queue %d: %w (%w)", b.ifindex, b.queue, ErrQueueTaken, err)
		default:
			return fmt.Errorf("bind ifindex %d queue %d: %w", b.ifindex, b.queue, err)
		}
	}
}

func setsockopt(fd, opt int, p unsafe.Pointer, size uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), size, 0)
	if e != 0 {
		return e
	}
	return nil
}

func getsockopt(fd, opt int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// Ifindex and Queue identify what the binding is bound to.
func (b *Binding) Ifindex() int { return b.ifindex }
func (b *Binding) Queue() int   { return b.queue }

// Fd is the socket, for poll(2) or epoll.
func (b *Binding) Fd() int { return b.fd }

// Frames is the UMEM size in frames; FrameSize the size of each.
func (b *Binding) Frames() uint32    { return b.o.frames }
func (b *Binding) FrameSize() uint32 { return b.o.frameSize }

func (b *Binding) frameIndex(addr uint64) (uint32, bool) {
	i := addr / uint64(b.o.frameSize)
	return uint32(i), i < uint64(b.o.frames)
}

// Frame returns the bytes of d, aliasing the UMEM: valid while the caller
// owns the frame. Its capacity runs to the end of the frame's chunk, so a
// TX frame can be written with Frame(d)[:n] after AllocTX.
func (b *Binding) Frame(d Desc) []byte {
	base := d.Addr &^ uint64(b.o.frameSize-1)
	end := base + uint64(b.o.frameSize)
	if d.Addr+uint64(d.Len) > end || end > uint64(len(b.umem)) {
		return nil
	}
	return b.umem[d.Addr : d.Addr+uint64(d.Len) : end]
}

// Receive takes up to len(batch) received frames off the RX ring. The
// frames belong to the caller until it passes them to Release or Transmit.
// It never blocks; use Poll to wait.
func (b *Binding) Receive(batch []Desc) (int, error) {
	if b.closed.Load() {
		return 0, ErrClosed
	}
	n := min(b.rx.available(), uint32(len(batch)))
	if n == 0 {
		// Zero-copy drivers stop filling when the fill ring ran dry and
		// flag it; recvfrom wakes them. Copy mode never sets the flag.
		if b.needWakeup && b.fill.needWakeup() {
			b.kicks.Add(1)
			_, _, _ = unix.Recvfrom(b.fd, nil, unix.MSG_DONTWAIT)
		}
		return 0, nil
	}
	descs := b.rx.descs()
	for i := uint32(0); i < n; i++ {
		d := descs[(b.rx.local+i)&b.rx.mask]
		batch[i] = d
		if idx, ok := b.frameIndex(d.Addr); ok && b.state[idx] == stKernRX {
			b.state[idx] = stApp
		} else {
			// The kernel validates fill addresses, so this means the
			// ledger and the kernel disagree: count it, don't hide it.
			b.badDescs.Add(1)
		}
	}
	b.rx.local += n
	b.rx.release()
	b.ledger.move(stKernRX, stApp, n)
	b.received.Add(uint64(n))
	return int(n), nil
}

// RXPending is how many received descriptors wait in the RX ring, not yet
// taken by Receive: a worker's backlog. Datapath call (the RX consumer).
func (b *Binding) RXPending() uint32 {
	if b.closed.Load() {
		return 0
	}
	return b.rx.available()
}

// RXSize is the RX ring's number of slots.
func (b *Binding) RXSize() uint32 { return b.o.rx }

// Release gives frames the caller owns back: to the fill ring while it has
// room, else to the free stack. It never depends on TX progress, so RX keeps
// its frames however backed up TX is. A descriptor the caller does not own
// stops the release there with ErrFrameState.
func (b *Binding) Release(descs []Desc) error {
	if b.closed.Load() {
		return ErrClosed
	}
	slots := b.fill.freeSlots()
	addrs := b.fill.addrs()
	var toFill, toFree uint32
	var err error
	for _, d := range descs {
		idx, ok := b.frameIndex(d.Addr)
		if !ok || b.state[idx] != stApp {
			err = fmt.Errorf("release frame at %#x: %w", d.Addr, ErrFrameState)
			break
		}
		base := uint64(idx) * uint64(b.o.frameSize)
		if idx >= b.mirrorStart {
			// A mirror clone that was not sent: back to its own pool.
			b.mirrorStack = append(b.mirrorStack, base)
			b.mirrorFree.Add(1)
			b.state[idx] = stFree
			toFree++
			continue
		}
		if toFill < slots {
			addrs[(b.fill.local+toFill)&b.fill.mask] = base
			b.state[idx] = stKernRX
			toFill++
		} else {
			b.freeStack = append(b.freeStack, base)
			b.state[idx] = stFree
			toFree++
		}
	}
	if toFill > 0 {
		b.fill.local += toFill
		b.fill.publish()
		b.ledger.move(stApp, stKernRX, toFill)
	}
	b.ledger.move(stApp, stFree, toFree)
	return err
}

// Refill tops the fill ring up from the free stack and returns how many
// frames it added.
func (b *Binding) Refill() int {
	if b.closed.Load() {
		return 0
	}
	n := min(b.fill.freeSlots(), uint32(len(b.freeStack)))
	if n == 0 {
		return 0
	}
	addrs := b.fill.addrs()
	for i := uint32(0); i < n; i++ {
		a := b.freeStack[len(b.freeStack)-1]
		b.freeStack = b.freeStack[:len(b.freeStack)-1]
		addrs[(b.fill.local+i)&b.fill.mask] = a
		b.state[a/uint64(b.o.frameSize)] = stKernRX
	}
	b.fill.local += n
	b.fill.publish()
	b.ledger.move(stFree, stKernRX, n)
	return int(n)
}

// AllocTX takes a free frame for the caller to build a frame in; set Len
// before Transmit. It refuses (false) rather than take a frame the fill ring
// is short of: RX keeps priority over locally originated TX.
//
// asavie/xdp's GetDescs scans a flag per UMEM frame on every call and
// returns a slice the next call overwrites; a stack makes this O(1).
func (b *Binding) AllocTX() (Desc, bool) {
	if b.closed.Load() {
		return Desc{}, false
	}
	inKernRX := b.ledger.counts[stKernRX].Load()
	var deficit uint32
	if b.o.fill > inKernRX {
		deficit = b.o.fill - inKernRX
	}
	if uint32(len(b.freeStack)) <= deficit {
		return Desc{}, false
	}
	a := b.freeStack[len(b.freeStack)-1]
	b.freeStack = b.freeStack[:len(b.freeStack)-1]
	b.state[a/uint64(b.o.frameSize)] = stApp
	b.ledger.move(stFree, stApp, 1)
	return Desc{Addr: a, Len: b.o.frameSize}, true
}

// AllocMirror takes a frame from the mirror pool (Options.MirrorFrames),
// never from the frames RX and AllocTX use; false when the pool is empty.
// The frame is then the caller's like one from AllocTX: Transmit it or
// Release it (either way it returns to the mirror pool once done).
func (b *Binding) AllocMirror() (Desc, bool) {
	if b.closed.Load() || len(b.mirrorStack) == 0 {
		return Desc{}, false
	}
	a := b.mirrorStack[len(b.mirrorStack)-1]
	b.mirrorStack = b.mirrorStack[:len(b.mirrorStack)-1]
	b.mirrorFree.Add(^uint32(0))
	b.state[a/uint64(b.o.frameSize)] = stApp
	b.ledger.move(stFree, stApp, 1)
	return Desc{Addr: a, Len: b.o.frameSize}, true
}

// Transmit queues descs (frames the caller owns: received or allocated) on
// the TX ring and kicks the kernel. It never blocks: it queues what fits and
// returns how many it queued; the rest stay the caller's. Queued frames
// belong to the binding until Complete reaps them.
//
// The error is about the kick, not the queueing: frames counted in queued
// stay in the TX ring and go out on a later kick (Transmit or Kick).
// ErrLinkDown means the interface is down; ErrFrameState a descriptor the
// caller does not own (nothing from it on is queued).
func (b *Binding) Transmit(descs []Desc) (queued int, err error) {
	queued, err = b.Enqueue(descs)
	if errors.Is(err, ErrClosed) {
		return queued, err
	}
	if kerr := b.Kick(); kerr != nil {
		err = errors.Join(err, kerr)
	}
	return queued, err
}

// Enqueue is Transmit without the kick: the frames wait in the TX ring for
// a Kick, which another goroutine may make (see Kick).
func (b *Binding) Enqueue(descs []Desc) (queued int, err error) {
	if b.closed.Load() {
		return 0, ErrClosed
	}
	n := min(b.tx.freeSlots(), uint32(len(descs)))
	ring := b.tx.descs()
	var q uint32
	for ; q < n; q++ {
		d := descs[q]
		idx, ok := b.frameIndex(d.Addr)
		if !ok || b.state[idx] != stApp || b.Frame(d) == nil {
			err = fmt.Errorf("transmit frame at %#x: %w", d.Addr, ErrFrameState)
			break
		}
		ring[(b.tx.local+q)&b.tx.mask] = d
		b.state[idx] = stKernTX
	}
	if q > 0 {
		b.tx.local += q
		b.tx.publish()
		b.ledger.move(stApp, stKernTX, q)
		b.transmitted.Add(uint64(q))
	}
	return int(q), err
}

// TXPending reports whether the TX ring holds frames the kernel has not
// taken yet. It reads only the shared ring indexes, so any goroutine may
// call it, also concurrently with Close (false once closed).
func (b *Binding) TXPending() bool {
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed.Load() {
		return false
	}
	return atomic.LoadUint32(b.tx.prod) != atomic.LoadUint32(b.tx.cons)
}

// TXConsumed is the kernel's TX consumer index: how many descriptors it
// has taken off the TX ring since Open, modulo 2^32. Like TXPending, any
// goroutine may read it.
func (b *Binding) TXConsumed() uint32 {
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed.Load() {
		return 0
	}
	return atomic.LoadUint32(b.tx.cons)
}

// maxKicks bounds one Kick: copy mode sends at most 32 frames (or
// Options.TXBudget) per sendto and answers EAGAIN with frames left, so a
// full 2048-entry ring needs 64 kicks; beyond that the kernel is not making
// progress (completion ring full, no skbs) and the caller should reap and
// come back.
const maxKicks = 256

// Kick asks the kernel to send what is in the TX ring: the replacement for
// asavie/xdp's Transmit, which sends once, stops at the first EAGAIN with
// frames left, and panics on every errno but EINTR/EAGAIN/EBUSY — including
// ENETDOWN and ENOBUFS when a link goes down. Here those come back as
// ErrLinkDown. With need_wakeup the kernel says whether it needs the kick.
//
// Kick is the one datapath call that may run concurrently with the
// goroutine producing TX (Transmit, Enqueue) and with Close: it reads only
// the shared ring indexes under the read side of the lock Close takes, and
// the kernel serialises sendto on a socket. So the sendto, the expensive
// part of copy-mode TX, can be made outside any lock the datapath shares:
// a producer that held its egress's lock across it kept that egress's own
// worker waiting for hundreds of microseconds per batch (measured: Go's
// mutex then switched to hand-off mode and both workers spent their time
// in wake-ups).
func (b *Binding) Kick() error {
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed.Load() {
		return ErrClosed
	}
	for i := 0; i < maxKicks; i++ {
		pending := atomic.LoadUint32(b.tx.prod) - atomic.LoadUint32(b.tx.cons)
		if pending == 0 || (b.needWakeup && !b.tx.needWakeup()) {
			return nil
		}
		before := atomic.LoadUint32(b.tx.cons)
		b.kicks.Add(1)
		err := unix.Sendto(b.fd, nil, unix.MSG_DONTWAIT, nil)
		switch {
		case err == nil, errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY):
			// EAGAIN: budget spent with frames left, or no completion
			// slot/skb. EBUSY: another sender holds the queue. Go on
			// while the kernel makes progress.
			if atomic.LoadUint32(b.tx.cons) == before {
				return nil
			}
		case errors.Is(err, unix.ENETDOWN), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENXIO):
			b.kickErrs.Add(1)
			return fmt.Errorf("kick tx on ifindex %d: %w (%w)", b.ifindex, ErrLinkDown, err)
		default:
			b.kickErrs.Add(1)
			return fmt.Errorf("kick tx on ifindex %d: %w", b.ifindex, err)
		}
	}
	return nil
}

// Complete reaps the completion ring, returning sent frames to the free
// stack, and returns how many. Call it every loop iteration: the kernel
// stops transmitting when the completion ring is full.
func (b *Binding) Complete() int {
	if b.closed.Load() {
		return 0
	}
	n := b.comp.available()
	if n == 0 {
		return 0
	}
	addrs := b.comp.addrs()
	var good uint32
	for i := uint32(0); i < n; i++ {
		a := addrs[(b.comp.local+i)&b.comp.mask]
		idx, ok := b.frameIndex(a)
		if !ok || b.state[idx] != stKernTX {
			b.badDescs.Add(1)
			continue
		}
		b.state[idx] = stFree
		if idx >= b.mirrorStart {
			b.mirrorStack = append(b.mirrorStack, uint64(idx)*uint64(b.o.frameSize))
			b.mirrorFree.Add(1)
		} else {
			b.freeStack = append(b.freeStack, uint64(idx)*uint64(b.o.frameSize))
		}
		good++
	}
	b.comp.local += n
	b.comp.release()
	b.ledger.move(stKernTX, stFree, good)
	b.completed.Add(uint64(good))
	return int(n)
}

// Poll waits up to timeout for received frames (and, with pending TX, for
// completions). It returns true when the socket is readable or writable.
// A negative timeout waits forever; the worker's loop should use a bounded
// one and check its context between calls.
func (b *Binding) Poll(timeout time.Duration) (bool, error) {
	if b.closed.Load() {
		return false, ErrClosed
	}
	ev := int16(unix.POLLIN)
	if b.tx.local != atomic.LoadUint32(b.tx.cons) || b.ledger.counts[stKernTX].Load() > 0 {
		ev |= unix.POLLOUT
	}
	ms := -1
	if timeout >= 0 {
		ms = int(timeout.Milliseconds())
	}
	for {
		fds := []unix.PollFd{{Fd: int32(b.fd), Events: ev}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll xdp socket: %w", err)
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return false, fmt.Errorf("poll xdp socket: revents %#x: %w", fds[0].Revents, unix.ENXIO)
		}
		return n > 0, nil
	}
}

// FrameStats counts UMEM frames by state; the fields always add up to Total.
type FrameStats struct {
	Total uint32
	// Free frames are on the binding's free stack.
	Free uint32
	// FillRing frames are the kernel's for RX: queued in the fill ring or
	// taken from it and not yet produced to the RX ring.
	FillRing uint32
	// RXRing frames are received and waiting in the RX ring for Receive.
	RXRing uint32
	// App frames are the caller's (received, or allocated for TX).
	App uint32
	// TXRing frames are queued for the kernel to send.
	TXRing uint32
	// Completion frames were taken by the kernel for sending and are not
	// yet reaped by Complete.
	Completion uint32
}

// Sum adds the states; it equals Total.
func (f FrameStats) Sum() uint32 {
	return f.Free + f.FillRing + f.RXRing + f.App + f.TXRing + f.Completion
}

// KernelStats is XDP_STATISTICS, read with getsockopt. asavie/xdp's Stats
// dereferences a nil RX ring on TX-only sockets; this always works.
type KernelStats struct {
	RXDropped            uint64 // dropped for reasons other than invalid descriptors
	RXInvalidDescs       uint64
	TXInvalidDescs       uint64
	RXRingFull           uint64 // dropped because the RX ring was full
	RXFillRingEmptyDescs uint64 // frames the kernel could not place: fill ring empty
	TXRingEmptyDescs     uint64 // kicks that found the TX ring empty
}

// Stats describes a binding at one instant.
type Stats struct {
	Ifindex, Queue           int
	ZeroCopy, NeedWakeup     bool
	Frames                   FrameStats
	Fill, RX, TX, Completion RingStats
	Kernel                   KernelStats
	// Cumulative frame counts since Open.
	Received, Transmitted, Completed uint64
	// Kicks is sendto/recvfrom wakeups; KickErrors those that failed with
	// an error other than EAGAIN/EBUSY (e.g. link down).
	Kicks, KickErrors uint64
	// BadDescs counts descriptors from the kernel that did not match the
	// ledger (should stay 0).
	BadDescs uint64
	// BindRetries is how many times Open retried an EBUSY bind.
	BindRetries int
	// MirrorFrames is the mirror pool's size (Options.MirrorFrames) and
	// MirrorFree how many of its frames are free; the others are in
	// flight and counted in Frames under their state (App, TXRing,
	// Completion), like any frame.
	MirrorFrames, MirrorFree uint32
}

// Stats returns a snapshot. It is safe to call from any goroutine while the
// worker runs: the ring indexes are read atomically and the frame states
// from the ledger, so FrameStats always adds up to Total.
func (b *Binding) Stats() (Stats, error) {
	if b == nil {
		return Stats{}, ErrClosed
	}
	b.closeMu.RLock()
	defer b.closeMu.RUnlock()
	if b.closed.Load() {
		return Stats{}, ErrClosed
	}
	s := Stats{
		Ifindex: b.ifindex, Queue: b.queue, ZeroCopy: b.zeroCopy, NeedWakeup: b.needWakeup,
		Fill: b.fill.stats(), RX: b.rx.stats(), TX: b.tx.stats(), Completion: b.comp.stats(),
		Received: b.received.Load(), Transmitted: b.transmitted.Load(), Completed: b.completed.Load(),
		Kicks: b.kicks.Load(), KickErrors: b.kickErrs.Load(), BadDescs: b.badDescs.Load(),
		BindRetries:  b.bindRetries,
		MirrorFrames: b.o.mirror, MirrorFree: b.mirrorFree.Load(),
	}
	c := b.ledger.snapshot()
	// The ledger knows how many frames the kernel holds for RX and for TX;
	// the ring indexes (read at slightly different instants) only split
	// those totals, clamped, so the sum stays exact.
	s.Frames = FrameStats{Total: b.o.frames, Free: c[stFree], App: c[stApp]}
	s.Frames.RXRing = min(s.RX.Depth(), c[stKernRX])
	s.Frames.FillRing = c[stKernRX] - s.Frames.RXRing
	s.Frames.TXRing = min(s.TX.Depth(), c[stKernTX])
	s.Frames.Completion = c[stKernTX] - s.Frames.TXRing

	var ks unix.XDPStatistics
	if err := getsockopt(b.fd, unix.XDP_STATISTICS, unsafe.Pointer(&ks), unsafe.Sizeof(ks)); err != nil {
		return s, fmt.Errorf("read xdp statistics: %w", err)
	}
	s.Kernel = KernelStats{
		RXDropped: ks.Rx_dropped, RXInvalidDescs: ks.Rx_invalid_descs, TXInvalidDescs: ks.Tx_invalid_descs,
		RXRingFull: ks.Rx_ring_full, RXFillRingEmptyDescs: ks.Rx_fill_ring_empty_descs, TXRingEmptyDescs: ks.Tx_ring_empty_descs,
	}
	return s, nil
}

// Close unpublishes the socket from the shim (ready flag, then XSKMAP entry),
// closes it and unmaps the rings and UMEM: unmapping is what lets the kernel
// release the queue, so a new Open on it succeeds. Frames the caller still
// holds become invalid. Close must not run concurrently with the worker's
// datapath calls; it may run concurrently with Stats. It is safe on nil and
// idempotent.
func (b *Binding) Close() error {
	if b == nil {
		return nil
	}
	b.closeMu.Lock()
	defer b.closeMu.Unlock()
	if b.closed.Swap(true) {
		return nil
	}
	return b.teardown()
}

func (b *Binding) teardown() error {
	var errs []error
	if b.shim != nil {
		errs = append(errs, b.shim.detachSocket(uint32(b.queue)))
		b.shim = nil
	}
	for _, r := range []*ring{&b.fill, &b.comp, &b.rx, &b.tx} {
		if err := r.unmap(); err != nil {
			errs = append(errs, fmt.Errorf("unmap ring: %w", err))
		}
	}
	if b.fd >= 0 {
		if err := unix.Close(b.fd); err != nil {
			errs = append(errs, fmt.Errorf("close xdp socket: %w", err))
		}
		b.fd = -1
	}
	if b.umem != nil {
		if err := unix.Munmap(b.umem); err != nil {
			errs = append(errs, fmt.Errorf("unmap umem: %w", err))
		}
		b.umem = nil
	}
	return errors.Join(errs...)
}
