package userspacebackend

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/userspacebackend/internal/flowcache"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// Binding states, as ResourceStats reports them.
const (
	stateDown    int32 = iota // no socket: link down, or not yet bound
	stateUp                   // socket bound, worker forwarding
	stateFailed               // the last bind failed; retried with backoff
	stateStopped              // retired or closed
)

var stateNames = [...]string{"down", "up", "failed", "stopped"}

// binding is one AF_XDP socket on one (interface, queue) and the worker
// goroutine that owns it.
//
// Every datapath call on the socket (xsk.Binding is single-producer,
// single-consumer per ring) happens under mu: the owner takes it twice per
// batch (receive; release and refill), and a worker forwarding into this
// binding takes it once per batch to allocate, copy and transmit (a worker
// mirroring into it only tries: TryLock). Only the owner closes or
// replaces the socket, so the owner may read its received frames without
// holding mu; a SPAN binding's owner also kicks without it (xsk Kick is
// safe concurrently with the producer).
type binding struct {
	be    *Backend
	port  *port
	queue int
	name  string // "ifname/qN", the scope in ResourceStats
	xo    xsk.Options

	mu sync.Mutex
	xb *xsk.Binding // guarded by mu; nil while down

	// live is xb for readers that take no lock (ResourceStats):
	// xsk.Binding.Stats is safe concurrently with Close.
	live  atomic.Pointer[xsk.Binding]
	state atomic.Int32
	fc    atomic.Pointer[flowcache.Cache]

	// span marks a TX-only binding of a mirror output that is not a
	// managed interface: no shim, and its worker only reaps and kicks.
	span bool
	wake chan struct{} // span: producers' nudge to kick (capacity 1)
	// mirrorReserve is the mirror pool size the next socket is opened
	// with; rebindReq asks the worker to reopen its socket (to carve a
	// pool for a port that became a mirror output).
	mirrorReserve atomic.Uint32
	rebindReq     atomic.Bool

	stopReq atomic.Bool
	started bool
	done    chan struct{}

	cnt       counterSet
	kern      kernelCounters
	lastPanic atomic.Pointer[string]
	lastErr   atomic.Pointer[string]
}

func newBinding(be *Backend, p *port, queue int, xo *xsk.Options) *binding {
	o := *xo
	o.Shim = p.shim
	return &binding{be: be, port: p, queue: queue, name: fmt.Sprintf("%s/q%d", p.name, queue), xo: o, done: make(chan struct{})}
}

// open binds a socket and publishes it to the shim (ready flag last).
func (bd *binding) open() error {
	var xb *xsk.Binding
	err := netnsutil.Do(bd.be.opts.NetNS, func() error {
		var err error
		o := bd.xo
		o.MirrorFrames = bd.mirrorReserve.Load()
		o.FrameSize = max(o.FrameSize, bd.be.frameSize.Load())
		xb, err = xsk.Open(bd.port.ifindex, bd.queue, &o)
		return err
	})
	if err != nil {
		msg := err.Error()
		bd.lastErr.Store(&msg)
		bd.state.Store(stateFailed)
		return err
	}
	bd.mu.Lock()
	bd.xb = xb
	bd.mu.Unlock()
	bd.live.Store(xb)
	bd.state.Store(stateUp)
	if !bd.span && bd.be.beatEvery > 0 {
		// The worker beats from its first loop on; until then the queue is
		// alive too (a new socket of this process).
		bd.port.shim.Beat(uint32(bd.queue))
	}
	return nil
}

// closeSocket clears the ready flag, closes the socket and unmaps its
// UMEM. Frames in it are gone with it, which is why only the owner (or
// whoever stopped the owner) calls it. It keeps the socket's kernel
// counters.
func (bd *binding) closeSocket() {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	xb := bd.xb
	if xb == nil {
		return
	}
	bd.xb = nil
	bd.live.Store(nil)
	if st, err := xb.Stats(); err == nil {
		k := st.Kernel
		for i, v := range [numKernel]uint64{k.RXDropped, k.RXInvalidDescs, k.TXInvalidDescs, k.RXRingFull, k.RXFillRingEmptyDescs, k.TXRingEmptyDescs} {
			bd.kern[i].Add(v)
		}
	}
	if err := xb.Close(); err != nil {
		msg := err.Error()
		bd.lastErr.Store(&msg)
	}
	if bd.state.Load() != stateStopped {
		bd.state.Store(stateDown)
	}
}

func (bd *binding) start() {
	bd.started = true
	go bd.run()
}

// retire stops the worker, closes the socket and folds the binding's
// counters into the backend's, so global counters never go backwards.
// Control plane only (applyMu held).
func (bd *binding) retire() {
	bd.stopReq.Store(true)
	if bd.started {
		<-bd.done
	}
	bd.closeSocket()
	bd.state.Store(stateStopped)
	bd.be.retired.addSet(&bd.cnt)
	for i := range bd.kern {
		bd.be.retiredKernel[i].Add(bd.kern[i].Load())
	}
}

type exitReason int

const (
	exitStop exitReason = iota
	exitLinkDown
	exitPanic
	exitRebind
)

// testHook, when set by a test, runs at the top of every worker loop
// iteration (e.g. to inject a panic).
var testHook atomic.Pointer[func(*binding)]

// run is the worker goroutine: forward while the socket is up; on link
// down tear it down and rebind when the link is back; on a panic count it,
// tear the socket down (its UMEM goes with it, so nothing the panic left
// half-done can leak) and rebind.
func (bd *binding) run() {
	defer close(bd.done)
	w := newWorker(bd)
	bd.fc.Store(w.fc)
	backoff := 10 * time.Millisecond
	for !bd.stopReq.Load() {
		bd.mu.Lock()
		up := bd.xb != nil
		bd.mu.Unlock()
		if !up {
			if !bd.port.linkUp.Load() {
				bd.state.Store(stateDown)
				time.Sleep(bd.be.opts.IdlePoll)
				continue
			}
			if err := bd.open(); err != nil {
				bd.cnt[cBindErrors].Add(1)
				time.Sleep(backoff)
				backoff = min(2*backoff, time.Second)
				continue
			}
			bd.cnt[cRebinds].Add(1)
			backoff = 10 * time.Millisecond
		}
		switch w.loop() {
		case exitLinkDown:
			bd.cnt[cLinkDown].Add(1)
			bd.closeSocket()
		case exitPanic, exitRebind:
			bd.closeSocket()
		}
	}
	bd.closeSocket()
}

// poll waits for frames on fd for at most d.
func poll(fd int, d time.Duration) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	_, err := unix.Poll(fds, int(d.Milliseconds()))
	if errors.Is(err, unix.EINTR) {
		return
	}
}
