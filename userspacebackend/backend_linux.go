package userspacebackend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
)

// Backend is a running userspace (AF_XDP) dataplane. It implements
// dataplane.DataPlane, dataplane.SessionLister, dataplane.SessionClearer
// and dataplane.ResourceStatsReuser. See the package
// documentation for the contracts.
type Backend struct {
	opts  Options
	start time.Time

	applyMu sync.Mutex // serialises Apply and Close; guards the control-plane fields
	closed  atomic.Bool

	// snap is what the workers read, once per batch.
	snap atomic.Pointer[snapshot]
	// epoch is the flow caches' generation: bumped by every Apply and
	// every CacheRefresh, so cached egress/MAC decisions age out.
	epoch atomic.Uint64

	// Control plane (applyMu).
	ports    map[string]*port
	sessions *session.Table
	router   router
	capacity uint32
	shards   uint32
	frames   uint32
	ringSize uint32
	gen      uint64
	watch    *linkWatch
	// spans are the TX-only ports of mirror outputs that are not managed
	// interfaces; mirrorCnt the rules' counters, by scope.
	spans     map[string]*port
	mirrorCnt map[string]*mirrorCounters
	hkStop    chan struct{}
	hkDone    chan struct{}
	// flowCache is the per-worker flow cache size for workers started
	// from now on.
	flowCache atomic.Uint32

	// retired keeps the counters of bindings that were removed, so the
	// global counters never go backwards.
	retired counterSet
	// retiredKernel keeps XDP_STATISTICS of sockets that were closed.
	retiredKernel kernelCounters
	// icmpLimit limits the ICMP errors the datapath sends.
	icmpLimit icmpLimiter
	// frameSize is the UMEM frame size of sockets opened from now on:
	// the largest any managed interface's MTU needs (it never shrinks).
	frameSize atomic.Uint32
	// zoneIDs and zoneNames number the zones every config named (applyMu).
	zoneIDs   map[string]uint16
	zoneNames []string
	// endedByPolicy and cleared count the sessions Apply and
	// ClearSessions ended.
	endedByPolicy atomic.Uint64
	cleared       atomic.Uint64
	// nat is the address-translation state that outlives a generation:
	// slot allocators and rule names (nat_linux.go).
	nat natRegistry
	// steer is the NAT steering last programmed into the shims (applyMu).
	steer map[netip.Addr]uint8
	// pin is the pinned dataplane (Options.PinDir); nil unpinned.
	pin *pinned
	// beatEvery is how often a worker writes its heartbeat (an eighth of
	// the limit); 0 when the check is off.
	beatEvery int64
	// kpass hands packets to unresolved next hops to the kernel (set by
	// New, closed by Close after the workers stopped).
	kpass *kernelPass
}

var (
	_ dataplane.DataPlane           = (*Backend)(nil)
	_ dataplane.SessionLister       = (*Backend)(nil)
	_ dataplane.SessionClearer      = (*Backend)(nil)
	_ dataplane.ResourceStatsReuser = (*Backend)(nil)
)

// New prepares a backend. Nothing is attached or bound until the first
// Apply, because table sizes, interfaces and queues come from the config.
func New(ctx context.Context, opts *Options) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.TXBudget == 0 {
		o.TXBudget = DefaultTXBudget
	}
	if o.CacheRefresh <= 0 {
		o.CacheRefresh = DefaultCacheRefresh
	}
	if o.IdlePoll <= 0 {
		o.IdlePoll = DefaultIdlePoll
	}
	if o.SessionExpireInterval == 0 {
		o.SessionExpireInterval = time.Second
	}
	if o.HeartbeatLimit == 0 {
		o.HeartbeatLimit = DefaultHeartbeatLimit
	}
	if o.HeartbeatLimit > 0 && o.IdlePoll*2 >= o.HeartbeatLimit {
		return nil, fmt.Errorf("userspace options: %w", &dataplane.ConfigError{Problems: []dataplane.Problem{{Field: "HeartbeatLimit",
			Message: fmt.Sprintf("%v must be more than twice IdlePoll (%v): an idle worker beats once per IdlePoll", o.HeartbeatLimit, o.IdlePoll)}}})
	}
	if err := netnsutil.Do(o.NetNS, func() error { return nil }); err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	kp, err := newKernelPass(o.NetNS)
	if err != nil {
		return nil, err
	}
	b := &Backend{opts: o, start: time.Now(), ports: map[string]*port{}, kpass: kp}
	if o.HeartbeatLimit > 0 {
		b.beatEvery = int64(o.HeartbeatLimit / 8)
	}
	if o.PinDir != "" {
		if err := b.openPinned(); err != nil {
			kp.close()
			return nil, err
		}
	}
	return b, nil
}

// Mode returns dataplane.ModeUserspace.
func (b *Backend) Mode() dataplane.Mode { return dataplane.ModeUserspace }

func (b *Backend) flowCacheSize() uint32 { return b.flowCache.Load() }

// now is the datapath clock: monotonic nanoseconds since New.
func (b *Backend) now() int64 { return int64(time.Since(b.start)) }

// linkUsable reports whether a link can carry traffic: administratively
// up and operationally up (or unknown, as for drivers without carrier).
func linkUsable(a *netlink.LinkAttrs) bool {
	if a.Flags&net.FlagUp == 0 {
		return false
	}
	return a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown
}

// startBackground starts the link watcher and the housekeeping goroutine
// once. applyMu is held.
func (b *Backend) startBackground() {
	if b.hkStop == nil {
		b.hkStop, b.hkDone = make(chan struct{}), make(chan struct{})
		go b.housekeeping(b.hkStop, b.hkDone)
	}
	if b.watch == nil {
		w, err := startLinkWatch(b)
		if err == nil {
			b.watch = w
		}
		// Without a subscription link changes are still caught by the
		// housekeeping poll (once per refresh period).
	}
}

// housekeeping ages the flow caches, sweeps idle sessions and polls link
// state and local addresses as a backstop for the netlink subscription.
func (b *Backend) housekeeping(stop, done chan struct{}) {
	defer close(done)
	tick := time.NewTicker(b.opts.CacheRefresh)
	defer tick.Stop()
	var lastSweep time.Time
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		b.epoch.Add(1)
		// Half a tick of tolerance: ticks come a little early or late,
		// and a strict comparison skipped every other one (measured: a
		// 1 s interval swept every 2 s, so closed sessions stayed up to
		// 3 s with a 1 s timeout).
		if b.opts.SessionExpireInterval > 0 && time.Since(lastSweep) >= b.opts.SessionExpireInterval-b.opts.CacheRefresh/2 {
			lastSweep = time.Now()
			if s := b.snap.Load(); s != nil && b.sessionsTable() != nil {
				b.sessionsTable().Expire(b.now(), 1<<16)
			}
		}
		b.pollLinks()
	}
}

func (b *Backend) sessionsTable() *session.Table {
	if s := b.snap.Load(); s != nil {
		return s.sessions
	}
	return nil
}

// pollLinks re-reads the link state of every managed interface and the
// local addresses; cheap enough once per refresh period.
func (b *Backend) pollLinks() {
	s := b.snap.Load()
	if s == nil {
		return
	}
	_ = netnsutil.Do(b.opts.NetNS, func() error {
		for _, p := range s.ports {
			lk, err := netlink.LinkByIndex(p.ifindex)
			if err != nil {
				p.setLink(false)
				continue
			}
			p.setLink(linkUsable(lk.Attrs()))
			b.setMTU(s, p.port, uint32(lk.Attrs().MTU))
			p.addrs.Store(readPortAddrs(p.ifindex))
		}
		for _, p := range s.spans {
			lk, err := netlink.LinkByIndex(p.ifindex)
			p.setLink(err == nil && linkUsable(lk.Attrs()))
		}
		if local, err := localAddrs(); err == nil {
			for _, p := range s.ports {
				_ = p.shim.SetLocalAddrs(local)
			}
			_ = programNATSteering(s, local)
		}
		return nil
	})
	b.followMasquerade(s)
}

// Sessions lists at most limit sessions (limit <= 0: all) and the counts,
// with each session's state, whether it is assured and its zones.
func (b *Backend) Sessions(ctx context.Context, limit int) ([]dataplane.Session, dataplane.SessionCounts, error) {
	if b == nil || b.closed.Load() {
		return nil, dataplane.SessionCounts{}, dataplane.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, dataplane.SessionCounts{}, err
	}
	s := b.snap.Load()
	if s == nil {
		return nil, dataplane.SessionCounts{}, nil
	}
	t := s.sessions
	now := b.now()
	var out []dataplane.Session
	for _, e := range t.Snapshot(limit) {
		if now-e.LastSeen > t.TimeoutOf(e.Tuple.Proto, e.State) {
			// Expired, not yet reclaimed: it matches no packet, so it is
			// not listed (as the eBPF backend does).
			continue
		}
		ds := dataplane.Session{
			Protocol:    protoName(e.Tuple.Proto),
			Source:      netip.AddrPortFrom(e.Tuple.SrcAddr(), e.Tuple.SrcPort).String(),
			Destination: netip.AddrPortFrom(e.Tuple.DstAddr(), e.Tuple.DstPort).String(),
			Packets:     e.Packets, Bytes: e.Bytes,
			IdleSeconds: time.Duration(max(now-e.LastSeen, 0)).Seconds(),
			State:       e.State, Assured: e.Assured,
			FromZone: s.zoneName(e.FromZone), ToZone: s.zoneName(e.ToZone),
		}
		b.natSessionFields(&ds, &e)
		out = append(out, ds)
	}
	return out, sessionCounts(t), nil
}

// sessionCounts are the table's counts as reports give them.
func sessionCounts(t *session.Table) dataplane.SessionCounts {
	v4, v6 := t.Counts()
	return dataplane.SessionCounts{IPv4: v4, IPv6: v6, Total: v4 + v6, Unassured: t.Unassured(), EarlyAging: t.EarlyAging()}
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_ICMPV6:
		return "icmpv6"
	}
	return fmt.Sprintf("%d", p)
}

// Close stops the workers, clears every ready flag, closes every socket
// and detaches every shim; with Options.PinDir it also removes every pin
// and the directory. It is idempotent and safe on nil.
func (b *Backend) Close() error {
	return b.shutdown(false)
}

// Release ends this process's hold on a pinned dataplane
// (dataplane.Releaser): the workers stop and the sockets close, but every
// shim stays attached and pinned, dropping transit frames and passing
// ARP, ND and the firewall's own traffic to the kernel, until a New with
// the same Options.PinDir adopts it (an upgrade, a restart). Sessions are
// lost. Without PinDir Release is Close. The backend is closed afterwards.
func (b *Backend) Release() error {
	return b.shutdown(b != nil && b.opts.PinDir != "")
}

func (b *Backend) shutdown(keepPins bool) error {
	if b == nil {
		return nil
	}
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	if b.closed.Swap(true) {
		return nil
	}
	var errs []error
	if b.watch != nil {
		b.watch.stop()
		b.watch = nil
	}
	if b.hkStop != nil {
		close(b.hkStop)
		<-b.hkDone
		b.hkStop = nil
	}
	for _, p := range b.ports {
		for _, bd := range p.bindings {
			bd.retire()
		}
	}
	for _, sp := range b.spans {
		sp.bindings[0].retire()
	}
	b.spans = nil
	for name, p := range b.ports {
		var err error
		if keepPins {
			err = p.shim.Release()
		} else {
			err = p.shim.Close()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("detach shim from %s: %w", name, err))
		}
	}
	b.ports = nil
	if err := b.kpass.close(); err != nil {
		errs = append(errs, fmt.Errorf("close the kernel hand-off: %w", err))
	}
	if s := b.snap.Load(); s != nil && s.neigh != nil {
		if err := s.neigh.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close neighbour table: %w", err))
		}
	}
	if b.router != nil {
		errs = append(errs, b.router.Close())
	}
	if err := b.closePinned(!keepPins); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	return errors.Join(errs...)
}
