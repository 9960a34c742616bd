//go:build linux

package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/testutil"
)

// Options configures a [Lab]; nil means defaults.
type Options struct {
	// MirrorSink adds a Sink namespace linked to the firewall, the output
	// of port-mirroring tests.
	MirrorSink bool
	// Queues gives every veth end this many RX and TX queues; 0 means 1.
	// veth picks the receiving end's queue by the sending CPU, so with a
	// queue per CPU, frames sent from two CPUs land in two rings, each
	// drained by the NAPI of its own CPU, as on a multi-queue NIC; with
	// one queue, a CPU sending into a ring that the other CPU's NAPI
	// drains can overflow it while that CPU is busy.
	Queues int
	// KernelVethDefaults keeps every veth end as the kernel makes it (GRO
	// off, TX checksum offload and TSO on), as in containers and
	// namespaces made by hand with `ip link add ... type veth`: sockets
	// then send partial checksums and GSO frames, and a veth end without
	// NAPI drops frames XDP redirects into it. Without it every end gets
	// GRO on and TX checksum offload off (see the package doc).
	KernelVethDefaults bool
}

// Lab is a client, firewall and server namespace (and optionally a sink),
// joined by veth pairs through the firewall:
//
//	Client[ClientIf] <-> [FwClientIf]Firewall[FwServerIf] <-> [ServerIf]Server
//	                                 Firewall[FwSinkIf]   <-> [SinkIf]Sink
//
// Each link has an IPv4 /24 and an IPv6 /64; the firewall end is .1 / ::1,
// the peer end .2 / ::2. Client and server route everything via the
// firewall. All fields are read-only.
type Lab struct {
	Client, Firewall, Server, Sink *NS

	// Interface names; the Fw* ones live in Firewall, the others in the
	// namespace they are named after. Sink ones are empty without a sink.
	ClientIf, ServerIf, SinkIf       string
	FwClientIf, FwServerIf, FwSinkIf string

	ClientAddr4, ClientAddr6     netip.Addr
	ServerAddr4, ServerAddr6     netip.Addr
	SinkAddr4, SinkAddr6         netip.Addr
	FwClientAddr4, FwClientAddr6 netip.Addr
	FwServerAddr4, FwServerAddr6 netip.Addr
	FwSinkAddr4, FwSinkAddr6     netip.Addr

	// Link prefixes.
	ClientNet4, ClientNet6 netip.Prefix
	ServerNet4, ServerNet6 netip.Prefix
	SinkNet4, SinkNet6     netip.Prefix

	ClientMAC, FwClientMAC net.HardwareAddr
	ServerMAC, FwServerMAC net.HardwareAddr
	SinkMAC, FwSinkMAC     net.HardwareAddr

	// Interface indexes, each in its own namespace.
	ClientIndex, FwClientIndex int
	ServerIndex, FwServerIndex int
	SinkIndex, FwSinkIndex     int

	// Suffix is the random part of every name in this lab.
	Suffix string
	// Owner is the process that made the lab; every namespace name
	// carries it (see Sweep).
	Owner Owner
	// Swept is what New removed of dead processes' labs before it
	// started (see Sweep); a failed sweep does not fail New.
	Swept SweepResult
	// SweepErr is why that sweep was incomplete, if it was.
	SweepErr error

	opts   Options
	mu     sync.Mutex
	closed bool
	nss    []*NS
	links  []labLink
}

// labLink is one veth pair, as created.
type labLink struct {
	peer             *NS
	fwIf, peerIf     string
	fwAddr, peerAddr [2]netip.Prefix // [0] IPv4, [1] IPv6
	fwMAC, peerMAC   net.HardwareAddr
	fwIdx, peerIdx   int
}

// NewT creates a lab for a test or benchmark: it skips (or fails under
// FWPLANE_REQUIRE_PRIVILEGED=1) without the privileges, fails the test on any
// setup error, and closes the lab in tb.Cleanup, failing the test if
// cleanup fails.
func NewT(tb testing.TB, opts *Options) *Lab {
	tb.Helper()
	testutil.Privileged(tb, testutil.NeedNetNS)
	l, err := New(context.Background(), opts)
	if err != nil {
		tb.Fatalf("create netlab: %v", err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("close netlab: %v", err)
		}
	})
	return l
}

// New creates a lab. If it fails part-way, everything it created is
// removed before it returns. ctx bounds the setup.
func New(ctx context.Context, opts *Options) (_ *Lab, err error) {
	if opts == nil {
		opts = &Options{}
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("generate lab suffix: %w", err)
	}
	owner, err := Self()
	if err != nil {
		return nil, fmt.Errorf("create lab: read own start time: %w", err)
	}
	l := &Lab{Suffix: hex.EncodeToString(rnd[:3]), Owner: owner, opts: *opts}
	l.Swept, l.SweepErr = Sweep()
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()

	mk := func(role string) (*NS, error) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("create lab: %w", err)
		}
		ns, err := newNS(nsName(l.Suffix, role, owner))
		if err != nil {
			return nil, err
		}
		l.nss = append(l.nss, ns)
		return ns, nil
	}
	if l.Client, err = mk("client"); err != nil {
		return nil, err
	}
	if l.Firewall, err = mk("firewall"); err != nil {
		return nil, err
	}
	if l.Server, err = mk("server"); err != nil {
		return nil, err
	}
	if opts.MirrorSink {
		if l.Sink, err = mk("sink"); err != nil {
			return nil, err
		}
	}
	for _, ns := range l.nss {
		if err := ns.Do(func() error { return prepareNS(ns == l.Firewall) }); err != nil {
			return nil, err
		}
	}

	// The lab byte keeps two labs' addresses apart, which matters only to a
	// human reading captures: the namespaces isolate them anyway.
	lb := rnd[3]%250 + 1
	type planned struct {
		peer         *NS
		fwIf, peerIf string
		k            byte
	}
	plan := []planned{{l.Client, "fwc", "cli", 1}, {l.Server, "fws", "srv", 2}}
	if l.Sink != nil {
		plan = append(plan, planned{l.Sink, "fwk", "snk", 3})
	}
	fwH, err := l.Firewall.handle()
	if err != nil {
		return nil, err
	}
	defer fwH.Close()
	fwNL, err := netlink.NewHandleAt(fwH)
	if err != nil {
		return nil, fmt.Errorf("open netlink in %s: %w", l.Firewall, err)
	}
	defer fwNL.Close()
	for _, p := range plan {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("create lab: %w", err)
		}
		ll := labLink{
			peer:   p.peer,
			fwIf:   p.fwIf + "-" + l.Suffix,
			peerIf: p.peerIf + "-" + l.Suffix,
			fwAddr: [2]netip.Prefix{
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, lb, p.k, 1}), 24),
				netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x00, 0, lb, 0, p.k, 15: 1}), 64),
			},
			peerAddr: [2]netip.Prefix{
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, lb, p.k, 2}), 24),
				netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x00, 0, lb, 0, p.k, 15: 2}), 64),
			},
		}
		if err := l.addLink(fwNL, &ll); err != nil {
			return nil, err
		}
	}

	get := func(i int) labLink { return l.links[i] }
	c, s := get(0), get(1)
	l.ClientIf, l.FwClientIf, l.ClientMAC, l.FwClientMAC = c.peerIf, c.fwIf, c.peerMAC, c.fwMAC
	l.ClientIndex, l.FwClientIndex = c.peerIdx, c.fwIdx
	l.ClientAddr4, l.ClientAddr6 = c.peerAddr[0].Addr(), c.peerAddr[1].Addr()
	l.FwClientAddr4, l.FwClientAddr6 = c.fwAddr[0].Addr(), c.fwAddr[1].Addr()
	l.ClientNet4, l.ClientNet6 = c.fwAddr[0].Masked(), c.fwAddr[1].Masked()
	l.ServerIf, l.FwServerIf, l.ServerMAC, l.FwServerMAC = s.peerIf, s.fwIf, s.peerMAC, s.fwMAC
	l.ServerIndex, l.FwServerIndex = s.peerIdx, s.fwIdx
	l.ServerAddr4, l.ServerAddr6 = s.peerAddr[0].Addr(), s.peerAddr[1].Addr()
	l.FwServerAddr4, l.FwServerAddr6 = s.fwAddr[0].Addr(), s.fwAddr[1].Addr()
	l.ServerNet4, l.ServerNet6 = s.fwAddr[0].Masked(), s.fwAddr[1].Masked()
	if l.Sink != nil {
		k := get(2)
		l.SinkIf, l.FwSinkIf, l.SinkMAC, l.FwSinkMAC = k.peerIf, k.fwIf, k.peerMAC, k.fwMAC
		l.SinkIndex, l.FwSinkIndex = k.peerIdx, k.fwIdx
		l.SinkAddr4, l.SinkAddr6 = k.peerAddr[0].Addr(), k.peerAddr[1].Addr()
		l.FwSinkAddr4, l.FwSinkAddr6 = k.fwAddr[0].Addr(), k.fwAddr[1].Addr()
		l.SinkNet4, l.SinkNet6 = k.fwAddr[0].Masked(), k.fwAddr[1].Masked()
	}

	for _, ll := range l.links {
		if err := waitUsable(ctx, l.Firewall, ll.fwIf); err != nil {
			return nil, err
		}
		if err := waitUsable(ctx, ll.peer, ll.peerIf); err != nil {
			return nil, err
		}
	}

	// Client and server reach everything through the firewall.
	for _, x := range []labLink{c, s} {
		err := withNetlink(x.peer, func(h *netlink.Handle) error {
			for fam := range 2 {
				gw := x.fwAddr[fam].Addr()
				r := &netlink.Route{LinkIndex: x.peerIdx, Gw: gw.AsSlice()}
				if err := h.RouteAdd(r); err != nil {
					return fmt.Errorf("add default route via %s in %s: %w", gw, x.peer, err)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return l, nil
}

// prepareNS sets the namespace's sysctls before any veth exists, so new
// interfaces inherit them from "default".
func prepareNS(forward bool) error {
	settings := [][2]string{
		// Usable at once: no duplicate address detection delay.
		{"net/ipv6/conf/all/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_dad", "0"},
		// Sinks and spoofing tests see foreign sources.
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
	}
	if forward {
		settings = append(settings,
			[2]string{"net/ipv4/ip_forward", "1"},
			[2]string{"net/ipv6/conf/all/forwarding", "1"},
			[2]string{"net/ipv6/conf/default/forwarding", "1"},
		)
	}
	for _, s := range settings {
		if err := setSysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// addLink creates the veth pair with its peer end directly in the peer
// namespace, so the root namespace never holds a lab link, then configures
// both ends.
func (l *Lab) addLink(fwNL *netlink.Handle, ll *labLink) error {
	peerH, err := ll.peer.handle()
	if err != nil {
		return err
	}
	defer peerH.Close()
	veth := &netlink.Veth{
		// An index unlike the peer's (fresh namespaces number from 2)
		// makes the kernel treat the pair's carrier changes as urgent,
		// so the link becomes usable in microseconds instead of up to a
		// second later.
		LinkAttrs:     netlink.LinkAttrs{Name: ll.fwIf, Index: 100 + len(l.links)},
		PeerName:      ll.peerIf,
		PeerNamespace: netlink.NsFd(int(peerH)),
	}
	if q := l.opts.Queues; q > 1 {
		veth.NumTxQueues, veth.NumRxQueues = q, q
		veth.PeerNumTxQueues, veth.PeerNumRxQueues = uint32(q), uint32(q)
	}
	if err := fwNL.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/%s: %w", ll.fwIf, ll.peerIf, err)
	}
	// Recorded at once so Close deletes it even if configuring fails.
	l.mu.Lock()
	l.links = append(l.links, *ll)
	idx := len(l.links) - 1
	l.mu.Unlock()

	if ll.fwMAC, ll.fwIdx, err = configureEnd(l.Firewall, ll.fwIf, ll.fwAddr, l.opts.KernelVethDefaults); err != nil {
		return err
	}
	if ll.peerMAC, ll.peerIdx, err = configureEnd(ll.peer, ll.peerIf, ll.peerAddr, l.opts.KernelVethDefaults); err != nil {
		return err
	}
	l.mu.Lock()
	l.links[idx] = *ll
	l.mu.Unlock()
	return nil
}

// configureEnd addresses one veth end, turns GRO on (see setGRO) and TX
// checksum offload off (see setTxChecksum) unless kernelDefaults, and
// brings it up.
func configureEnd(ns *NS, iface string, addrs [2]netip.Prefix, kernelDefaults bool) (mac net.HardwareAddr, index int, err error) {
	err = ns.Do(func() error {
		link, err := netlink.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", iface, ns, err)
		}
		for _, a := range addrs {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
			if a.Addr().Is6() {
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := netlink.AddrAdd(link, addr); err != nil {
				return fmt.Errorf("add address %s to %s: %w", a, iface, err)
			}
		}
		if !kernelDefaults {
			if err := setGRO(iface, true); err != nil {
				return err
			}
			if err := setTxChecksum(iface, false); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", iface, err)
		}
		mac, index = link.Attrs().HardwareAddr, link.Attrs().Index
		return nil
	})
	return mac, index, err
}

// withNetlink runs fn with a netlink handle bound to ns.
func withNetlink(ns *NS, fn func(*netlink.Handle) error) error {
	nsh, err := ns.handle()
	if err != nil {
		return err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("open netlink in %s: %w", ns, err)
	}
	defer h.Close()
	return fn(h)
}

// ResolveNeighbors installs permanent neighbor entries (ARP and NDP) for
// both ends of every lab link, so forwarding never waits for, or races
// with, address resolution. The kernel's own ARP/ND still works for
// anything else.
func (l *Lab) ResolveNeighbors(ctx context.Context) error {
	l.mu.Lock()
	links, closed := append([]labLink(nil), l.links...), l.closed
	l.mu.Unlock()
	if closed {
		return errors.New("resolve neighbors: lab closed")
	}
	for _, ll := range links {
		ends := []struct {
			ns    *NS
			idx   int
			other [2]netip.Prefix
			mac   net.HardwareAddr
		}{
			{l.Firewall, ll.fwIdx, ll.peerAddr, ll.peerMAC},
			{ll.peer, ll.peerIdx, ll.fwAddr, ll.fwMAC},
		}
		for _, e := range ends {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("resolve neighbors: %w", err)
			}
			err := withNetlink(e.ns, func(h *netlink.Handle) error {
				for _, a := range e.other {
					fam := netlink.FAMILY_V4
					if a.Addr().Is6() {
						fam = netlink.FAMILY_V6
					}
					n := &netlink.Neigh{LinkIndex: e.idx, Family: fam, State: netlink.NUD_PERMANENT,
						IP: a.Addr().AsSlice(), HardwareAddr: e.mac}
					if err := h.NeighSet(n); err != nil {
						return fmt.Errorf("set neighbor %s in %s: %w", a.Addr(), e.ns, err)
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// Close removes every veth pair and namespace of the lab. It is safe to
// call on nil and more than once; later calls return nil.
func (l *Lab) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	// Deleting the firewall ends destroys the pairs synchronously; a
	// namespace's own teardown would do it too, but later and
	// asynchronously, after Close has returned.
	if l.Firewall != nil && len(l.links) > 0 {
		errs = append(errs, withNetlink(l.Firewall, func(h *netlink.Handle) error {
			var errs []error
			for _, ll := range l.links {
				link, err := h.LinkByName(ll.fwIf)
				if err != nil {
					var nf netlink.LinkNotFoundError
					if !errors.As(err, &nf) {
						errs = append(errs, fmt.Errorf("find %s: %w", ll.fwIf, err))
					}
					continue
				}
				if err := h.LinkDel(link); err != nil {
					errs = append(errs, fmt.Errorf("delete veth %s: %w", ll.fwIf, err))
				}
			}
			return errors.Join(errs...)
		}))
	}
	for _, ns := range l.nss {
		errs = append(errs, ns.remove())
	}
	return errors.Join(errs...)
}

// nsExists reports whether a named namespace is still mounted; for tests.
func nsExists(ns *NS) bool {
	h, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return false
	}
	h.Close()
	return true
}

// waitUsable waits until iface is operationally up and has its real qdisc:
// until the kernel's link watcher activates it, the device sits on the
// "noop" qdisc, which silently drops everything sent.
func waitUsable(ctx context.Context, ns *NS, iface string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return withNetlink(ns, func(h *netlink.Handle) error {
		for {
			link, err := h.LinkByName(iface)
			if err != nil {
				return fmt.Errorf("find %s in %s: %w", iface, ns, err)
			}
			ready := link.Attrs().OperState == netlink.OperUp
			if ready {
				qdiscs, err := h.QdiscList(link)
				if err != nil {
					return fmt.Errorf("list qdiscs of %s: %w", iface, err)
				}
				for _, q := range qdiscs {
					if q.Type() == "noop" {
						ready = false
					}
				}
			}
			if ready {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("wait for %s in %s to come up: %w", iface, ns, ctx.Err())
			case <-time.After(2 * time.Millisecond):
			}
		}
	})
}

// ArmRedirectTargets makes the firewall's client and server ends take
// frames an XDP program redirects into them. The kernel redirects only
// into a device that advertises ndo-xmit, and a veth end gets it when its
// peer's GRO is turned on while the peer is up (veth_set_features). The
// lab turns GRO on before the links are up, so its firewall ends start
// without it, which is what tests of the refusal need; ArmRedirectTargets
// turns each peer's GRO off and on again, which sets the flag for the rest
// of the lab's life. On kernel-default veths (GRO off) it does nothing:
// there the peers send partial checksums, which no XDP redirect may carry.
func (l *Lab) ArmRedirectTargets() error {
	if l.opts.KernelVethDefaults {
		return nil
	}
	for _, end := range []struct {
		ns    *NS
		iface string
	}{{l.Client, l.ClientIf}, {l.Server, l.ServerIf}} {
		if err := end.ns.Do(func() error {
			if err := setGRO(end.iface, false); err != nil {
				return err
			}
			return setGRO(end.iface, true)
		}); err != nil {
			return fmt.Errorf("arm %s as a redirect target: %w", end.iface, err)
		}
	}
	return nil
}
