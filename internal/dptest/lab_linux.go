package dptest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

// Ports the lab's server answers on, IPv4 and IPv6: UDP echo on
// PortUDP, PortOther and PortDenied; TCP echo on PortTCP and PortDenied.
// PortClosed has no listener (the server's kernel answers port
// unreachable).
const (
	PortTCP    = 8080
	PortUDP    = 5353
	PortOther  = 8053
	PortDenied = 9999
	PortClosed = 7001
	// PortInside is the client's TCP and UDP echo (on ClientAddr4): the
	// inside server of port-forwarding cases.
	PortInside = 80
)

// Lab is a netlab lab (client, firewall, server and a mirror sink) ready
// for conformance traffic: neighbours resolved, a pass-through XDP counter
// on the client, server and sink ends (a veth receives frames redirected
// into its peer only while it runs NAPI), echo servers on the server.
type Lab struct {
	*netlab.Lab
	Client, Server, Sink *netlab.Counter
	// ClientAddr4b is a second IPv4 address of the client (same link,
	// resolved on the firewall): two clients behind one NAT.
	ClientAddr4b netip.Addr
}

// NewLab builds a Lab, skipping (or failing under
// FWPLANE_REQUIRE_PRIVILEGED=1) without the privileges; everything is
// removed in tb.Cleanup.
func NewLab(tb testing.TB, opts *netlab.Options) *Lab {
	tb.Helper()
	testutil.Privileged(tb, testutil.NeedBPF, testutil.NeedNetNS)
	o := netlab.Options{MirrorSink: true}
	if opts != nil {
		o = *opts
		o.MirrorSink = true
	}
	l := &Lab{Lab: netlab.NewT(tb, &o)}
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		tb.Fatalf("resolve neighbours: %v", err)
	}
	for _, end := range []struct {
		ns    *netlab.NS
		iface string
		c     **netlab.Counter
	}{{l.Lab.Client, l.ClientIf, &l.Client}, {l.Lab.Server, l.ServerIf, &l.Server}, {l.Lab.Sink, l.SinkIf, &l.Sink}} {
		c, err := netlab.AttachCounter(end.ns, end.iface, nil)
		if err != nil {
			tb.Fatalf("attach counter to %s: %v", end.iface, err)
		}
		*end.c = c
		tb.Cleanup(func() { c.Close() })
	}
	if err := l.secondClient(); err != nil {
		tb.Fatal(err)
	}
	for _, echo := range []func() (func(), error){
		func() (func(), error) {
			return netlab.TCPEcho(ctx, l.Lab.Client, netip.AddrPortFrom(l.ClientAddr4, PortInside))
		},
		func() (func(), error) {
			return netlab.UDPEcho(ctx, l.Lab.Client, netip.AddrPortFrom(l.ClientAddr4, PortInside))
		},
	} {
		stop, err := echo()
		if err != nil {
			tb.Fatalf("client echo: %v", err)
		}
		tb.Cleanup(stop)
	}
	for _, a := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		for _, p := range []uint16{PortUDP, PortOther, PortDenied} {
			stop, err := netlab.UDPEcho(ctx, l.Lab.Server, netip.AddrPortFrom(a, p))
			if err != nil {
				tb.Fatalf("udp echo: %v", err)
			}
			tb.Cleanup(stop)
		}
		for _, p := range []uint16{PortTCP, PortDenied} {
			stop, err := netlab.TCPEcho(ctx, l.Lab.Server, netip.AddrPortFrom(a, p))
			if err != nil {
				tb.Fatalf("tcp echo: %v", err)
			}
			tb.Cleanup(stop)
		}
	}
	return l
}

// secondClient adds ClientAddr4b (.3 of the client link) to the client
// and a permanent neighbour entry for it on the firewall.
func (l *Lab) secondClient() error {
	l.ClientAddr4b = l.ClientNet4.Addr().Next().Next().Next()
	if err := AddAddress(l.Lab.Client, l.ClientIf, netip.PrefixFrom(l.ClientAddr4b, l.ClientNet4.Bits())); err != nil {
		return err
	}
	return l.Firewall.Do(func() error {
		n := &netlink.Neigh{LinkIndex: l.FwClientIndex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: l.ClientAddr4b.AsSlice(), HardwareAddr: l.ClientMAC}
		if err := netlink.NeighSet(n); err != nil {
			return fmt.Errorf("set neighbour %s: %w", l.ClientAddr4b, err)
		}
		return nil
	})
}

// Outcome is what a probe saw.
type Outcome int

const (
	// Answered: the reply came back (the flow passed both ways).
	Answered Outcome = iota
	// Silent: nothing came back before the deadline (dropped somewhere).
	Silent
	// PortUnreachable: an ICMP port unreachable came back (ECONNREFUSED).
	PortUnreachable
	// ICMPError: another ICMP error came back; see Probe.ICMP.
	ICMPError
	// Failed: the probe could not run (a setup error; see Probe.Err).
	Failed
)

func (o Outcome) String() string {
	return [...]string{"answered", "silent", "port unreachable", "icmp error", "failed"}[o]
}

// Probe is the result of one probe.
type Probe struct {
	Outcome Outcome
	// ICMP is the error the kernel queued on the socket (IP_RECVERR), for
	// PortUnreachable and ICMPError.
	ICMP *unix.SockExtendedErr
	// Offender is the address that sent the ICMP error.
	Offender netip.Addr
	Err      error
}

func (p Probe) String() string {
	switch {
	case p.Outcome == Failed:
		return "failed: " + p.Err.Error()
	case p.ICMP != nil:
		return fmt.Sprintf("%s (ICMP type %d code %d info %d from %s)", p.Outcome, p.ICMP.Type, p.ICMP.Code, p.ICMP.Info, p.Offender)
	}
	return p.Outcome.String()
}

// UDPOptions shape a UDP probe.
type UDPOptions struct {
	// SrcAddr fixes the source address (invalid: the kernel picks).
	SrcAddr netip.Addr
	// SrcPort fixes the source port (0: the kernel picks).
	SrcPort uint16
	// TTL sets the IPv4 TTL or IPv6 hop limit (0: the default).
	TTL int
	// Size is the payload size (0: 16 bytes).
	Size int
	// DF sets don't-fragment and ignores the path MTU the client knows
	// (IP_PMTUDISC_PROBE): a datagram too big for a hop meets that hop.
	DF bool
	// Fragment lets the client's kernel fragment a datagram bigger than
	// its own MTU (IP_PMTUDISC_DONT).
	Fragment bool
	// Timeout for the answer; 0: 2 s.
	Timeout time.Duration
}

// UDP sends one datagram from ns to dst and waits for the echo, an ICMP
// error (IP_RECVERR) or the timeout.
func UDP(ns *netlab.NS, dst netip.AddrPort, o UDPOptions) Probe {
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Size == 0 {
		o.Size = 16
	}
	v6 := dst.Addr().Is6()
	var fd int
	err := ns.Do(func() error {
		dom := unix.AF_INET
		if v6 {
			dom = unix.AF_INET6
		}
		var err error
		fd, err = unix.Socket(dom, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("udp socket: %w", err)
		}
		set := func(level, opt, v int) {
			if err == nil {
				err = unix.SetsockoptInt(fd, level, opt, v)
			}
		}
		set(unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		lvl, recverr, ttl, mtu := unix.IPPROTO_IP, unix.IP_RECVERR, unix.IP_TTL, unix.IP_MTU_DISCOVER
		probe, dont := unix.IP_PMTUDISC_PROBE, unix.IP_PMTUDISC_DONT
		if v6 {
			lvl, recverr, ttl, mtu = unix.IPPROTO_IPV6, unix.IPV6_RECVERR, unix.IPV6_UNICAST_HOPS, unix.IPV6_MTU_DISCOVER
			probe, dont = unix.IPV6_PMTUDISC_PROBE, unix.IPV6_PMTUDISC_DONT
		}
		set(lvl, recverr, 1)
		if o.TTL > 0 {
			set(lvl, ttl, o.TTL)
		}
		switch {
		case o.DF:
			set(lvl, mtu, probe)
		case o.Fragment:
			set(lvl, mtu, dont)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("udp socket options: %w", err)
		}
		var local, remote unix.Sockaddr
		if v6 {
			l6 := &unix.SockaddrInet6{Port: int(o.SrcPort)}
			if o.SrcAddr.IsValid() {
				l6.Addr = o.SrcAddr.As16()
			}
			local = l6
			remote = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
		} else {
			l4 := &unix.SockaddrInet4{Port: int(o.SrcPort)}
			if o.SrcAddr.IsValid() {
				l4.Addr = o.SrcAddr.As4()
			}
			local = l4
			remote = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		}
		if err := unix.Bind(fd, local); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind udp :%d: %w", o.SrcPort, err)
		}
		if err := unix.Connect(fd, remote); err != nil {
			unix.Close(fd)
			return fmt.Errorf("connect udp %s: %w", dst, err)
		}
		return nil
	})
	if err != nil {
		return Probe{Outcome: Failed, Err: err}
	}
	defer unix.Close(fd)
	payload := make([]byte, o.Size)
	copy(payload, "dptest")
	if _, err := unix.Write(fd, payload); err != nil {
		// A queued error from an earlier datagram, or EMSGSIZE from the
		// local stack: either is not the network's answer.
		return Probe{Outcome: Failed, Err: fmt.Errorf("send udp to %s: %w", dst, err)}
	}
	deadline := time.Now().Add(o.Timeout)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return Probe{Outcome: Silent}
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Probe{Outcome: Failed, Err: fmt.Errorf("poll: %w", err)}
		}
		if n == 0 {
			continue
		}
		if pfd[0].Revents&unix.POLLERR != 0 {
			return readErrQueue(fd)
		}
		if _, err := unix.Read(fd, buf); err == nil {
			return Probe{Outcome: Answered}
		} else if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			return readErrQueue(fd)
		}
	}
}

// readErrQueue takes the ICMP error the kernel queued on fd.
func readErrQueue(fd int) Probe {
	buf := make([]byte, 512)
	oob := make([]byte, 512)
	_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
	if err != nil {
		return Probe{Outcome: Failed, Err: fmt.Errorf("read error queue: %w", err)}
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return Probe{Outcome: Failed, Err: fmt.Errorf("parse error queue: %w", err)}
	}
	for _, m := range msgs {
		if !(m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR) &&
			!(m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
			continue
		}
		const eeLen = 16 // struct sock_extended_err
		if len(m.Data) < eeLen {
			continue
		}
		ee := *(*unix.SockExtendedErr)(unsafePointer(&m.Data[0]))
		p := Probe{Outcome: ICMPError, ICMP: &ee, Offender: offender(m.Data[eeLen:])}
		if ee.Errno == uint32(unix.ECONNREFUSED) {
			p.Outcome = PortUnreachable
		}
		return p
	}
	return Probe{Outcome: Failed, Err: errors.New("error queue held no IP_RECVERR message")}
}

// offender decodes the sockaddr after a sock_extended_err.
func offender(b []byte) netip.Addr {
	if len(b) < 2 {
		return netip.Addr{}
	}
	switch uint16(b[0]) | uint16(b[1])<<8 {
	case unix.AF_INET:
		if len(b) >= 8 {
			return netip.AddrFrom4([4]byte(b[4:8]))
		}
	case unix.AF_INET6:
		if len(b) >= 24 {
			return netip.AddrFrom16([16]byte(b[8:24]))
		}
	}
	return netip.Addr{}
}

// TCP connects from ns to dst, sends 3000 bytes (several segments each
// way), and checks the echo.
func TCP(ns *netlab.NS, dst netip.AddrPort, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	payload := []byte(strings.Repeat("x", 3000))
	got, err := netlab.TCPRoundTrip(ctx, ns, netip.AddrPort{}, dst, payload)
	if err != nil {
		return err
	}
	if string(got) != string(payload) {
		return fmt.Errorf("tcp echo returned %d bytes, want %d", len(got), len(payload))
	}
	return nil
}

// Ping sends one ICMP (IPv4) or ICMPv6 echo request from ns to dst over a
// raw socket and waits for the reply.
func Ping(ns *netlab.NS, dst netip.Addr, id uint16, timeout time.Duration) Probe {
	v6 := dst.Is6()
	var fd int
	err := ns.Do(func() error {
		dom, proto := unix.AF_INET, unix.IPPROTO_ICMP
		if v6 {
			dom, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
		}
		var err error
		fd, err = unix.Socket(dom, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("raw icmp socket: %w", err)
		}
		return nil
	})
	if err != nil {
		return Probe{Outcome: Failed, Err: err}
	}
	defer unix.Close(fd)
	req := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'd', 'p', 't', 'e', 's', 't'}
	var to unix.Sockaddr
	if v6 {
		req[0] = 128 // the kernel fills in the ICMPv6 checksum
		to = &unix.SockaddrInet6{Addr: dst.As16()}
	} else {
		to = &unix.SockaddrInet4{Addr: dst.As4()}
		c := checksum(req)
		req[2], req[3] = byte(c>>8), byte(c)
	}
	if err := unix.Sendto(fd, req, 0, to); err != nil {
		return Probe{Outcome: Failed, Err: fmt.Errorf("send echo to %s: %w", dst, err)}
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		tv := unix.NsecToTimeval(max(time.Until(deadline), time.Millisecond).Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return Probe{Outcome: Failed, Err: fmt.Errorf("receive: %w", err)}
		}
		msg := buf[:n]
		if !v6 {
			if n < 20 {
				continue
			}
			msg = msg[int(buf[0]&0xf)*4:] // raw IPv4 sockets see the IP header
		}
		reply := uint8(0)
		if v6 {
			reply = 129
		}
		if len(msg) >= 8 && msg[0] == reply && uint16(msg[4])<<8|uint16(msg[5]) == id && sameAddr(from, dst) {
			return Probe{Outcome: Answered}
		}
	}
	return Probe{Outcome: Silent}
}

func sameAddr(sa unix.Sockaddr, a netip.Addr) bool {
	switch s := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(s.Addr) == a
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(s.Addr) == a
	}
	return false
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// SendFrames writes raw Ethernet frames out of iface in ns (AF_PACKET),
// for frames no socket would send (an IPv6 packet with an IPv4-mapped
// source, a lone non-first fragment).
func SendFrames(ns *netlab.NS, iface string, frames ...[]byte) error {
	return ns.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("find %s: %w", iface, err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: ifi.Index}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return fmt.Errorf("send frame on %s: %w", iface, err)
			}
		}
		return nil
	})
}

// SetMTU sets the MTU of iface in ns.
func SetMTU(ns *netlab.NS, iface string, mtu int) error {
	return ns.Do(func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("find %s: %w", iface, err)
		}
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set mtu %d on %s: %w", mtu, iface, err)
		}
		return nil
	})
}

// AddAddress adds an address to iface in ns (IPv6 without duplicate
// address detection, so it is usable at once).
func AddAddress(ns *netlab.NS, iface string, p netip.Prefix) error {
	return ns.Do(func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("find %s: %w", iface, err)
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", p, iface, err)
		}
		return nil
	})
}

// DeleteAddress removes an address AddAddress added.
func DeleteAddress(ns *netlab.NS, iface string, p netip.Prefix) error {
	return ns.Do(func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("find %s: %w", iface, err)
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if err := netlink.AddrDel(l, a); err != nil {
			return fmt.Errorf("remove %s from %s: %w", p, iface, err)
		}
		return nil
	})
}

func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }

// FrameCapture records the frames an interface receives.
type FrameCapture struct{ c *netlab.Capturer }

// Capture starts recording what iface in ns receives.
func Capture(ns *netlab.NS, iface string) (*FrameCapture, error) {
	c, err := netlab.Capture(ns, iface, 4096)
	if err != nil {
		return nil, err
	}
	return &FrameCapture{c: c}, nil
}

// Count returns how many frames that match arrive within wait (parsed with
// internal/packet; frames it cannot parse never match). For a frame the
// kernel flags as left to checksum offload, Info.L4ChecksumOK is whether
// its checksum field holds the exact pseudo-header sum.
func (f *FrameCapture) Count(wait time.Duration, match func(packet.Info) bool) int {
	n := 0
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for {
		fr, err := f.c.NextFrame(ctx)
		if err != nil {
			return n
		}
		info, err := packet.Parse(fr.Data)
		if err == nil && fr.ChecksumNotReady {
			// Left to offload (a TC-forwarded GRO aggregate, say): the
			// receiver trusts it, so what must hold is the pseudo-header
			// sum of the frame as it is (a translation updates it).
			info.L4ChecksumOK = info.L4PartialOK
		}
		if err == nil && match(info) {
			n++
		}
	}
}

// Close stops the capture.
func (f *FrameCapture) Close() error { return f.c.Close() }

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
