package userspacebackend

import (
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/internal/netnsutil"
)

// linkWatch follows link and address changes in the dataplane's namespace
// over netlink: a managed link going down tears its bindings down (their
// workers see port.linkUp) and coming back up rebinds them; an address
// change reprograms the shims' local-address maps. The housekeeping poll
// is the backstop when a notification is lost.
type linkWatch struct {
	done  chan struct{}
	links chan netlink.LinkUpdate
	addrs chan netlink.AddrUpdate
	ended chan struct{}
}

func startLinkWatch(b *Backend) (*linkWatch, error) {
	w := &linkWatch{done: make(chan struct{}), links: make(chan netlink.LinkUpdate, 64),
		addrs: make(chan netlink.AddrUpdate, 64), ended: make(chan struct{})}
	// The subscription sockets are created inside the namespace and keep it.
	err := netnsutil.Do(b.opts.NetNS, func() error {
		if err := netlink.LinkSubscribeWithOptions(w.links, w.done, netlink.LinkSubscribeOptions{}); err != nil {
			return err
		}
		return netlink.AddrSubscribeWithOptions(w.addrs, w.done, netlink.AddrSubscribeOptions{})
	})
	if err != nil {
		close(w.done)
		return nil, err
	}
	go w.run(b)
	return w, nil
}

func (w *linkWatch) run(b *Backend) {
	defer close(w.ended)
	links, addrs := w.links, w.addrs
	for links != nil || addrs != nil {
		select {
		case u, ok := <-links:
			if !ok {
				links = nil
				continue
			}
			s := b.snap.Load()
			if s == nil || u.Link == nil {
				continue
			}
			if p := s.linkPort(int(u.Index)); p != nil {
				p.setLink(u.Header.Type != 17 /* RTM_DELLINK */ && linkUsable(u.Link.Attrs()))
				b.setMTU(s, p.port, uint32(u.Link.Attrs().MTU))
			}
		case _, ok := <-addrs:
			if !ok {
				addrs = nil
				continue
			}
			b.refreshLocal()
		}
	}
}

func (w *linkWatch) stop() {
	close(w.done)
	// netlink closes the channels once its readers see done; drain so a
	// reader blocked on a send can finish.
	for range w.links {
	}
	for range w.addrs {
	}
	<-w.ended
}

// refreshLocal reprograms every shim with the namespace's addresses and
// rereads every port's own addresses (the sources of its ICMP errors).
func (b *Backend) refreshLocal() {
	s := b.snap.Load()
	if s == nil {
		return
	}
	_ = netnsutil.Do(b.opts.NetNS, func() error {
		for _, p := range s.ports {
			p.addrs.Store(readPortAddrs(p.ifindex))
		}
		local, err := localAddrs()
		if err != nil {
			return err
		}
		for _, p := range s.ports {
			_ = p.shim.SetLocalAddrs(local)
		}
		return programNATSteering(s, local)
	})
	b.followMasquerade(s)
}

// setMTU records a managed port's new MTU: egress checks use it from the
// next packet on, and when its frames no longer fit the UMEM frames every
// socket reopens with larger ones (up to MaxMTU; beyond it the kernel
// drops what does not fit and counts it as xdp_rx_dropped).
func (b *Backend) setMTU(s *snapshot, p *port, mtu uint32) {
	if mtu == 0 || p.shim == nil || p.mtu.Swap(mtu) == mtu {
		return
	}
	if fs := frameSizeFor(mtu); fs > b.frameSize.Load() {
		b.growFrames(s, fs)
	}
}
