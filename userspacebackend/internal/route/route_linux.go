//go:build linux

package route

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
)

// Errors a Resolver returns.
var (
	// ErrNoRoute: the kernel has no usable route to the destination
	// (ENETUNREACH, EHOSTUNREACH, or an unreachable/prohibit/blackhole
	// route). The errno is wrapped too.
	ErrNoRoute = errors.New("no route to destination")
	// ErrClosed: Lookup after Close.
	ErrClosed = errors.New("route resolver closed")
)

// Defaults for Options.
const (
	DefaultCacheSize = 1024
	DefaultTTL       = 5 * time.Second
)

// Options configures a [Resolver]; nil means defaults.
type Options struct {
	// NetNSPath is the namespace whose routing decides (e.g.
	// /var/run/netns/NAME); empty means the namespace of the thread
	// calling New, normally the process's.
	NetNSPath string
	// CacheSize bounds the number of cached destinations; zero means
	// DefaultCacheSize, negative disables the cache.
	CacheSize int
	// TTL bounds how long a cached answer is used; zero means DefaultTTL.
	// It backstops the route subscription for changes the kernel does not
	// announce (IPv4 routes flushed with a link or an address).
	TTL time.Duration
}

// Result is the kernel's forwarding decision for one destination.
type Result struct {
	Dst netip.Addr
	// Ifindex is the egress interface in the Resolver's namespace.
	Ifindex int
	// Gateway is the next-hop router; the zero Addr means Dst is on-link.
	Gateway netip.Addr
	// Src is the preferred source address the kernel would use; may be
	// zero.
	Src netip.Addr
	// MTU is the route's MTU metric (a locked MTU or a learned path MTU);
	// zero means none: use the interface MTU.
	MTU int
	// Local is true when Dst is an address of this namespace: deliver it
	// to the kernel, do not forward.
	Local bool
}

// NextHop is the address whose neighbour entry the frame goes to.
func (r Result) NextHop() netip.Addr {
	if r.Gateway.IsValid() {
		return r.Gateway
	}
	return r.Dst
}

type cached struct {
	res     Result
	err     error
	gen     uint64
	expires time.Time
}

// Resolver answers route lookups in one namespace through netlink
// RTM_GETROUTE, caching answers per destination.
type Resolver struct {
	nsh netns.NsHandle
	h   *netlink.Handle
	ttl time.Duration
	max int

	mu    sync.RWMutex
	cache map[netip.Addr]cached
	// gen moves on every route change; entries of an older gen are stale.
	gen atomic.Uint64

	hits, misses, resubscribes atomic.Uint64

	closed    atomic.Bool
	closeOnce sync.Once
	quit      chan struct{}
	wg        sync.WaitGroup
}

type subscription struct {
	ch   chan netlink.RouteUpdate
	done chan struct{}
}

func (s *subscription) stop() {
	close(s.done)
	for range s.ch {
	}
}

// New opens a Resolver for the namespace in opts and subscribes to its
// route changes. ctx bounds the setup only.
func New(ctx context.Context, opts *Options) (_ *Resolver, err error) {
	if opts == nil {
		opts = &Options{}
	}
	r := &Resolver{nsh: netns.None(), ttl: opts.TTL, max: opts.CacheSize, quit: make(chan struct{})}
	if r.ttl <= 0 {
		r.ttl = DefaultTTL
	}
	if r.max == 0 {
		r.max = DefaultCacheSize
	}
	if r.max > 0 {
		r.cache = make(map[netip.Addr]cached, r.max)
	}
	defer func() {
		if err != nil {
			r.closeHandles()
		}
	}()
	if opts.NetNSPath != "" {
		if r.nsh, err = netns.GetFromPath(opts.NetNSPath); err != nil {
			return nil, fmt.Errorf("open netns %s: %w", opts.NetNSPath, err)
		}
	}
	if r.h, err = netlink.NewHandleAt(r.nsh); err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe to routes: %w", err)
	}
	if r.max > 0 {
		sub, err := r.subscribe()
		if err != nil {
			return nil, err
		}
		r.wg.Add(1)
		go r.run(sub)
	}
	return r, nil
}

func (r *Resolver) subscribe() (*subscription, error) {
	sub := &subscription{ch: make(chan netlink.RouteUpdate, 64), done: make(chan struct{})}
	nsh := r.nsh
	err := netlink.RouteSubscribeWithOptions(sub.ch, sub.done, netlink.RouteSubscribeOptions{Namespace: &nsh})
	if err != nil {
		close(sub.done)
		return nil, fmt.Errorf("subscribe to routes: %w", err)
	}
	// Anything cached before the subscription existed may be stale.
	r.gen.Add(1)
	return sub, nil
}

// run invalidates the cache on every route change and resubscribes when
// netlink ends the subscription (an overflow), until Close.
func (r *Resolver) run(sub *subscription) {
	defer r.wg.Done()
	for {
	consume:
		for {
			select {
			case <-r.quit:
				sub.stop()
				return
			case _, ok := <-sub.ch:
				if !ok {
					break consume
				}
				r.gen.Add(1)
			}
		}
		sub.stop()
		backoff := 10 * time.Millisecond
		for {
			r.resubscribes.Add(1)
			var err error
			if sub, err = r.subscribe(); err == nil {
				break
			}
			// Until a subscription exists, the TTL alone bounds staleness.
			select {
			case <-r.quit:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

// Lookup returns the route the kernel would use for a packet to dst. It is
// answered from the cache when the cached answer is younger than the TTL
// and no route changed since; otherwise it costs one netlink round trip.
// No route matches ErrNoRoute (and the errno) with errors.Is.
func (r *Resolver) Lookup(dst netip.Addr) (Result, error) {
	if r == nil || r.closed.Load() {
		return Result{}, fmt.Errorf("look up route: %w", ErrClosed)
	}
	if !dst.IsValid() {
		return Result{}, fmt.Errorf("look up route: invalid destination: %w", unix.EINVAL)
	}
	dst = dst.Unmap()
	gen := r.gen.Load()
	if r.max > 0 {
		r.mu.RLock()
		c, ok := r.cache[dst]
		r.mu.RUnlock()
		if ok && c.gen == gen && time.Now().Before(c.expires) {
			r.hits.Add(1)
			return c.res, c.err
		}
	}
	r.misses.Add(1)
	res, err := r.get(dst)
	if r.max > 0 && (err == nil || errors.Is(err, ErrNoRoute)) {
		r.store(dst, cached{res: res, err: err, gen: gen, expires: time.Now().Add(r.ttl)})
	}
	return res, err
}

func (r *Resolver) store(dst netip.Addr, c cached) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.cache[dst]; !ok && len(r.cache) >= r.max {
		// Drop stale answers first; if all are fresh, start over rather
		// than track recency: a miss costs one syscall.
		cur := r.gen.Load()
		now := time.Now()
		for k, v := range r.cache {
			if v.gen != cur || now.After(v.expires) {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= r.max {
			clear(r.cache)
		}
	}
	r.cache[dst] = c
}

func (r *Resolver) get(dst netip.Addr) (Result, error) {
	routes, err := r.h.RouteGet(dst.AsSlice())
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			switch errno {
			case unix.ENETUNREACH, unix.EHOSTUNREACH, unix.EACCES, unix.EINVAL:
				// EINVAL is what a blackhole route answers.
				return Result{}, fmt.Errorf("look up route to %s: %w: %w", dst, ErrNoRoute, errno)
			}
		}
		return Result{}, fmt.Errorf("look up route to %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return Result{}, fmt.Errorf("look up route to %s: empty answer: %w", dst, ErrNoRoute)
	}
	rt := routes[0]
	res := Result{Dst: dst, Ifindex: rt.LinkIndex, MTU: rt.MTU, Local: rt.Type == unix.RTN_LOCAL}
	if len(rt.MultiPath) > 0 && rt.LinkIndex == 0 {
		// Not expected from RTM_GETROUTE (the kernel picks a path), but
		// take the first rather than report no interface.
		res.Ifindex = rt.MultiPath[0].LinkIndex
		rt.Gw = rt.MultiPath[0].Gw
	}
	if gw, ok := netip.AddrFromSlice(rt.Gw); ok && !gw.IsUnspecified() {
		res.Gateway = gw.Unmap()
	} else if rt.Via != nil {
		if v, ok := rt.Via.(*netlink.Via); ok {
			if gw, ok := netip.AddrFromSlice(v.Addr); ok {
				res.Gateway = gw.Unmap() // IPv4 over an IPv6 next hop
			}
		}
	}
	if src, ok := netip.AddrFromSlice(rt.Src); ok {
		res.Src = src.Unmap()
	}
	if res.Ifindex == 0 {
		return Result{}, fmt.Errorf("look up route to %s: no egress interface: %w", dst, ErrNoRoute)
	}
	return res, nil
}

// Hits counts lookups answered from the cache.
func (r *Resolver) Hits() uint64 { return r.hits.Load() }

// Misses counts lookups that asked the kernel.
func (r *Resolver) Misses() uint64 { return r.misses.Load() }

// Invalidations counts cache invalidations: route changes seen plus
// (re)subscriptions. Each one logically empties the cache.
func (r *Resolver) Invalidations() uint64 { return r.gen.Load() }

// Resubscribes counts how often the route subscription was re-established.
func (r *Resolver) Resubscribes() uint64 { return r.resubscribes.Load() }

// Close stops the subscription goroutine and closes the netlink handle.
// Lookups after Close fail with ErrClosed. Safe on nil and idempotent;
// callers must not race Lookup with Close.
func (r *Resolver) Close() error {
	if r == nil {
		return nil
	}
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		close(r.quit)
		r.wg.Wait()
		r.closeHandles()
	})
	return nil
}

func (r *Resolver) closeHandles() {
	if r.h != nil {
		r.h.Close()
	}
	if r.nsh.IsOpen() {
		r.nsh.Close()
	}
}
