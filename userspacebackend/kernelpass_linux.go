package userspacebackend

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/netnsutil"
)

// kernelPass hands the kernel's output path the packets whose next hop
// has no neighbour entry yet, as the eBPF backend does with XDP_PASS: the
// kernel resolves the neighbour (ARP or neighbour solicitation) and holds
// the packet in the neighbour's queue meanwhile (unres_qlen_bytes), then
// sends it, so the first packet of a flow to a new next hop is delivered
// rather than dropped (the conformance case "neighbour/unresolved next
// hop"). The worker has already judged the packet (session, zones,
// policy) and made the router's edits (TTL, checksum): the kernel only
// routes it out of the egress interface the worker chose.
//
// A frame in an AF_XDP socket cannot be handed back to the kernel's
// receive path (only the shim's XDP_PASS could, and the shim runs before
// sessions and policy are known), so the IP packet is written to a raw
// IPPROTO_RAW socket of the dataplane's namespace (the header is the
// packet's own: IP_HDRINCL, implied for IPPROTO_RAW in both families)
// with IP_PKTINFO / IPV6_PKTINFO naming the egress interface. x/sys/unix,
// not a library: no netlink or socket package offers header-included raw
// sends with packet info.
//
// It never blocks a worker: a bounded pool of buffers and a queue to one
// writer goroutine; a packet that finds neither is dropped and counted
// (dropped_no_neighbor), and so is one the kernel refuses (counted by the
// writer, reported in the same counter). Nothing here allocates per
// packet.
type kernelPass struct {
	fd4, fd6 int
	queue    chan *passPacket
	free     chan *passPacket
	stop     chan struct{}
	done     chan struct{}
	// refused counts packets the kernel refused (sendmsg failed).
	refused atomic.Uint64
}

const (
	// passQueue is how many packets may wait for the writer: a burst of
	// first packets to new next hops; a flood beyond it is dropped, as
	// the kernel's own neighbour queue would.
	passQueue = 64
	// passMax is the largest packet handed over: MaxMTU fits.
	passMax = 4096
)

type passPacket struct {
	buf     [passMax]byte
	n       int
	ifindex int
	dst     netip.Addr
}

// newKernelPass opens the raw sockets in the namespace at netns and starts
// the writer.
func newKernelPass(netns string) (*kernelPass, error) {
	k := &kernelPass{fd4: -1, fd6: -1, queue: make(chan *passPacket, passQueue), free: make(chan *passPacket, passQueue),
		stop: make(chan struct{}), done: make(chan struct{})}
	err := netnsutil.Do(netns, func() error {
		var err error
		if k.fd4, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return fmt.Errorf("raw IPv4 socket: %w", err)
		}
		if k.fd6, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return fmt.Errorf("raw IPv6 socket: %w", err)
		}
		return nil
	})
	if err != nil {
		k.closeFDs()
		return nil, fmt.Errorf("open the kernel hand-off for unresolved next hops: %w", err)
	}
	for range passQueue {
		k.free <- &passPacket{}
	}
	go k.run()
	return k, nil
}

// pass queues the IP packet ip (at most passMax bytes) for the kernel to
// send to dst out of ifindex. It reports false when no buffer or queue
// slot was free.
func (k *kernelPass) pass(ifindex int, dst netip.Addr, ip []byte) bool {
	if k == nil || len(ip) > passMax {
		return false
	}
	var p *passPacket
	select {
	case p = <-k.free:
	default:
		return false
	}
	p.n = copy(p.buf[:], ip)
	p.ifindex, p.dst = ifindex, dst
	select {
	case k.queue <- p:
		return true
	default:
		k.free <- p
		return false
	}
}

func (k *kernelPass) run() {
	defer close(k.done)
	for {
		select {
		case <-k.stop:
			return
		case p := <-k.queue:
			if err := k.send(p); err != nil {
				k.refused.Add(1)
			}
			k.free <- p
		}
	}
}

func (k *kernelPass) send(p *passPacket) error {
	if p.dst.Is4() {
		oob := unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: int32(p.ifindex)})
		return unix.Sendmsg(k.fd4, p.buf[:p.n], oob, &unix.SockaddrInet4{Addr: p.dst.As4()}, 0)
	}
	oob := unix.PktInfo6(&unix.Inet6Pktinfo{Ifindex: uint32(p.ifindex)})
	return unix.Sendmsg(k.fd6, p.buf[:p.n], oob, &unix.SockaddrInet6{Addr: p.dst.As16()}, 0)
}

// Refused returns the packets the kernel refused.
func (k *kernelPass) Refused() uint64 {
	if k == nil {
		return 0
	}
	return k.refused.Load()
}

// close stops the writer (packets still queued are dropped) and closes
// the sockets. Workers must be stopped first; pass after close only
// fills the queue.
func (k *kernelPass) close() error {
	if k == nil {
		return nil
	}
	close(k.stop)
	<-k.done
	return k.closeFDs()
}

func (k *kernelPass) closeFDs() error {
	var errs []error
	for _, fd := range []*int{&k.fd4, &k.fd6} {
		if *fd >= 0 {
			errs = append(errs, unix.Close(*fd))
			*fd = -1
		}
	}
	return errors.Join(errs...)
}
