//go:build linux

package neigh

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
)

// Options configures a [Table]; nil means defaults.
type Options struct {
	// NetNSPath is the network namespace whose neighbour table is
	// mirrored (e.g. /var/run/netns/NAME); empty means the namespace of
	// the thread calling New, normally the process's.
	NetNSPath string
	// Capacity is the number of entries the table holds; zero means
	// dataplane.DefaultNeighbors. Pass Config.Tables.NeighborsOrDefault().
	Capacity uint32
	// Shards is a power of two; zero means DefaultShards. It is lowered
	// until no shard would have a capacity below one.
	Shards int
	// ReceiveBufferSize is the netlink socket's receive buffer in bytes;
	// zero keeps the kernel default. A larger buffer makes overflows (and
	// the resyncs they force) rarer during neighbour storms.
	ReceiveBufferSize int
	// ResolveQueue bounds pending RequestResolve calls; zero means 256.
	ResolveQueue int
}

// Table mirrors one namespace's kernel neighbour table (ARP and NDP) for
// the datapath. See the package documentation for the concurrency
// contract.
type Table struct {
	c *core

	nsh       netns.NsHandle
	hmu       sync.RWMutex // Resolve vs Close of h
	h         *netlink.Handle
	rcvbuf    int
	closeOnce sync.Once
	quit      chan struct{}
	wg        sync.WaitGroup
	resolveq  chan resolveReq

	resyncs        atomic.Uint64
	updates        atomic.Uint64
	resolveDropped atomic.Uint64
	needResync     atomic.Bool
	lastErr        atomic.Pointer[error]

	// beforeApply, when set by in-package tests, runs before each update
	// is applied, so a test can stall the consumer and overflow the socket.
	beforeApply atomic.Pointer[func()]
}

func (t *Table) setBeforeApply(fn func()) {
	if fn == nil {
		t.beforeApply.Store(nil)
		return
	}
	t.beforeApply.Store(&fn)
}

type resolveReq struct {
	ifindex int
	addr    netip.Addr
}

type subscription struct {
	ch   chan netlink.NeighUpdate
	done chan struct{}
}

// stop ends the subscription and waits for netlink's reader goroutine:
// it may be blocked sending to ch, so ch is drained until netlink closes it.
func (s *subscription) stop() {
	close(s.done)
	for range s.ch {
	}
}

// New mirrors the kernel neighbour table of the namespace in opts into a
// new Table. When New returns, every neighbour the kernel had is in the
// table (as far as capacity allows) and a subscription keeps it current
// until Close. ctx bounds the setup only.
func New(ctx context.Context, opts *Options) (_ *Table, err error) {
	if opts == nil {
		opts = &Options{}
	}
	capacity := opts.Capacity
	if capacity == 0 {
		capacity = dataplane.DefaultNeighbors
	}
	if capacity > dataplane.MaxTableEntries {
		return nil, fmt.Errorf("build neighbour table: capacity %d above %d: %w", capacity, dataplane.MaxTableEntries, ErrInvalidOptions)
	}
	shards := opts.Shards
	if shards == 0 {
		shards = DefaultShards
	}
	c, err := newCore(capacity, shards)
	if err != nil {
		return nil, err
	}
	qlen := opts.ResolveQueue
	if qlen <= 0 {
		qlen = 256
	}
	t := &Table{c: c, nsh: netns.None(), rcvbuf: opts.ReceiveBufferSize,
		quit: make(chan struct{}), resolveq: make(chan resolveReq, qlen)}
	defer func() {
		if err != nil {
			t.closeHandles()
		}
	}()
	if opts.NetNSPath != "" {
		if t.nsh, err = netns.GetFromPath(opts.NetNSPath); err != nil {
			return nil, fmt.Errorf("open netns %s: %w", opts.NetNSPath, err)
		}
	}
	if t.h, err = netlink.NewHandleAt(t.nsh); err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe to neighbours: %w", err)
	}
	sub, err := t.sync(false)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		sub.stop()
		return nil, fmt.Errorf("subscribe to neighbours: %w", err)
	}
	t.wg.Add(2)
	go t.run(sub)
	go t.resolver()
	return t, nil
}

// sync subscribes (with ListExisting), then takes a dump through the
// handle and applies it. Subscribing first means every change after the
// dump is also queued on the subscription, so replaying the queue after
// the dump converges on the kernel's state. With sweep, entries the dump
// no longer shows are removed: deletions missed during an overflow.
func (t *Table) sync(sweep bool) (*subscription, error) {
	sub := &subscription{ch: make(chan netlink.NeighUpdate, 256), done: make(chan struct{})}
	nsh := t.nsh
	err := netlink.NeighSubscribeWithOptions(sub.ch, sub.done, netlink.NeighSubscribeOptions{
		Namespace:         &nsh,
		ListExisting:      true,
		ErrorCallback:     func(err error) { t.onError(sub, err) },
		ReceiveBufferSize: t.rcvbuf,
	})
	if err != nil {
		// netlink may have started its closer goroutine before failing.
		close(sub.done)
		return nil, fmt.Errorf("subscribe to neighbours: %w", err)
	}
	var list []netlink.Neigh
	for try := 0; ; try++ {
		list, err = t.h.NeighList(0, 0)
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) || try == 4 {
			break
		}
	}
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		sub.stop()
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	if err != nil {
		// The table changed during every dump. The listed entries are
		// still valid and the queued events fix the rest, but deletions
		// missed earlier need a sweep: the consumer resyncs again.
		t.needResync.Store(true)
		t.lastErr.Store(&err)
	}
	seen := make(map[key]struct{}, len(list))
	for i := range list {
		if k, ok := t.apply(netlink.NeighUpdate{Type: unix.RTM_NEWNEIGH, Neigh: list[i]}); ok {
			seen[k] = struct{}{}
		}
	}
	if sweep && err == nil {
		for _, k := range t.c.keys() {
			if _, ok := seen[k]; !ok {
				t.c.remove(k)
			}
		}
	}
	return sub, nil
}

func (t *Table) onError(sub *subscription, err error) {
	select {
	case <-sub.done:
		return // the socket was closed on purpose
	default:
	}
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		t.needResync.Store(true)
	}
	t.lastErr.Store(&err)
}

// minResyncInterval is the shortest time between two resyncs.
const minResyncInterval = 50 * time.Millisecond

// run consumes the subscription until Close, resubscribing (and sweeping)
// whenever netlink ends it on an error such as ENOBUFS after an overflow,
// or reports an interrupted dump.
func (t *Table) run(sub *subscription) {
	defer t.wg.Done()
	lastSync := time.Now()
	for {
		t.consume(sub)
		sub.stop()
		// During a storm every dump may be interrupted or overflow again:
		// space resyncs out so they cannot spin.
		if wait := minResyncInterval - time.Since(lastSync); wait > 0 {
			select {
			case <-t.quit:
				return
			case <-time.After(wait):
			}
		}
		backoff := 10 * time.Millisecond
		for {
			select {
			case <-t.quit:
				return
			default:
			}
			t.needResync.Store(false)
			t.resyncs.Add(1)
			var err error
			lastSync = time.Now()
			if sub, err = t.sync(true); err == nil {
				break
			}
			t.lastErr.Store(&err)
			select {
			case <-t.quit:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

// consume applies updates until the subscription ends, a resync is
// needed, or the table closes.
func (t *Table) consume(sub *subscription) {
	for !t.needResync.Load() {
		select {
		case <-t.quit:
			return
		case u, ok := <-sub.ch:
			if !ok {
				return
			}
			if fn := t.beforeApply.Load(); fn != nil {
				(*fn)()
			}
			t.apply(u)
			t.updates.Add(1)
		}
	}
}

// usableStates are the NUD states whose lladdr the kernel itself would
// transmit to.
const usableStates = netlink.NUD_REACHABLE | netlink.NUD_PERMANENT | netlink.NUD_STALE |
	netlink.NUD_DELAY | netlink.NUD_PROBE

// apply writes one kernel update into the table and returns the entry's
// key (ok false for entries that are not IP neighbours on a link).
func (t *Table) apply(u netlink.NeighUpdate) (key, bool) {
	n := &u.Neigh
	if n.Family != unix.AF_INET && n.Family != unix.AF_INET6 {
		return key{}, false // bridge FDB and proxy entries
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return key{}, false
	}
	if n.Family == unix.AF_INET {
		ip = ip.Unmap()
	}
	k, ok := makeKey(n.LinkIndex, ip)
	if !ok {
		return key{}, false
	}
	if u.Type == unix.RTM_DELNEIGH || n.State&usableStates == 0 || len(n.HardwareAddr) != 6 || n.Flags&netlink.NTF_PROXY != 0 {
		t.c.remove(k)
		return k, true
	}
	var mac [6]byte
	copy(mac[:], n.HardwareAddr)
	t.c.set(k, packValue(mac, uint16(n.State)))
	return k, true
}

// Lookup returns the MAC address of addr's neighbour entry on ifindex. It
// never allocates and never waits for a writer holding a lock; see the
// package documentation.
func (t *Table) Lookup(ifindex int, addr netip.Addr) (mac [6]byte, ok bool) {
	k, ok := makeKey(ifindex, addr)
	if !ok {
		return mac, false
	}
	v, ok := t.c.lookup(k)
	if !ok {
		return mac, false
	}
	return unpackMAC(v), true
}

// Resolve asks the kernel to resolve addr on ifindex: it creates the
// neighbour entry if needed and sends it the same event a transmitted
// packet would (NTF_USE), so the kernel ARPs or solicits exactly as it
// would for its own traffic. It returns once the kernel accepted the
// request, not once the neighbour answered: the answer arrives through
// the subscription. It makes a netlink round trip; datapath workers use
// RequestResolve instead.
func (t *Table) Resolve(ifindex int, addr netip.Addr) error {
	if t == nil {
		return fmt.Errorf("resolve neighbour: %w", ErrClosed)
	}
	t.hmu.RLock()
	defer t.hmu.RUnlock()
	if t.h == nil {
		return fmt.Errorf("resolve neighbour: %w", ErrClosed)
	}
	fam := netlink.FAMILY_V6
	if addr.Is4() {
		fam = netlink.FAMILY_V4
	}
	n := &netlink.Neigh{LinkIndex: ifindex, Family: fam, IP: addr.AsSlice(), Flags: netlink.NTF_USE}
	if err := t.h.NeighSet(n); err != nil {
		return fmt.Errorf("resolve neighbour %s on ifindex %d: %w", addr, ifindex, err)
	}
	return nil
}

// RequestResolve queues a Resolve without blocking or allocating. It
// reports false, and counts the request in ResolveDropped, when the queue
// is full or the table is closed; the datapath retries on a later miss.
func (t *Table) RequestResolve(ifindex int, addr netip.Addr) bool {
	select {
	case <-t.quit:
		t.resolveDropped.Add(1)
		return false
	default:
	}
	select {
	case t.resolveq <- resolveReq{ifindex, addr}:
		return true
	default:
		t.resolveDropped.Add(1)
		return false
	}
}

func (t *Table) resolver() {
	defer t.wg.Done()
	for {
		select {
		case <-t.quit:
			return
		case r := <-t.resolveq:
			if err := t.Resolve(r.ifindex, r.addr); err != nil {
				t.lastErr.Store(&err)
			}
		}
	}
}

// Capacity is the number of entries the table can hold.
func (t *Table) Capacity() int { return int(t.c.capacity) }

// Used is the number of usable entries held now.
func (t *Table) Used() int { return t.c.used() }

// Shards is the number of shards.
func (t *Table) Shards() int { return len(t.c.shards) }

// ShardUsed is the number of entries in shard i (0 <= i < Shards()).
func (t *Table) ShardUsed(i int) int { return int(t.c.shards[i].used.Load()) }

// ShardCapacity is shard i's share of Capacity.
func (t *Table) ShardCapacity(i int) int { return int(t.c.shards[i].capacity) }

// Refused counts kernel entries that were not stored because their shard
// was full (each update of such an entry counts once).
func (t *Table) Refused() uint64 { return t.c.refused.Load() }

// Resyncs counts how often the subscription was re-established with a
// full dump, after an overflow (ENOBUFS) or an interrupted dump.
func (t *Table) Resyncs() uint64 { return t.resyncs.Load() }

// Updates counts subscription messages applied.
func (t *Table) Updates() uint64 { return t.updates.Load() }

// ResolveDropped counts RequestResolve calls that found the queue full.
func (t *Table) ResolveDropped() uint64 { return t.resolveDropped.Load() }

// LastError is the most recent error of the background goroutines (a
// failed resubscription, an overflow, a failed queued resolve), or nil.
func (t *Table) LastError() error {
	if p := t.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close stops the subscription and the resolver and waits for their
// goroutines. Lookups after Close keep answering from the last state. It
// is safe on nil and idempotent.
func (t *Table) Close() error {
	if t == nil {
		return nil
	}
	t.closeOnce.Do(func() {
		close(t.quit)
		t.wg.Wait()
		t.closeHandles()
	})
	return nil
}

func (t *Table) closeHandles() {
	t.hmu.Lock()
	defer t.hmu.Unlock()
	if t.h != nil {
		t.h.Close()
		t.h = nil
	}
	if t.nsh.IsOpen() {
		t.nsh.Close()
		t.nsh = netns.None()
	}
}
