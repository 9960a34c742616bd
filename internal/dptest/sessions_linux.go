package dptest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
)

// Ports of the servers the session-model cases start on the lab's server
// (IPv4): PortHold accepts TCP connections, echoes their first 4 bytes and
// keeps them open ([Holder]); PortAccept is a netlab.Acceptor for
// handshake runs; nothing listens on PortFlood, so the server answers a
// SYN to it with an RST.
const (
	PortHold   = 8081
	PortAccept = 8090
	PortFlood  = 8091
)

// LongEnv, set to 1, runs the session cases at the full length
// (e.g. 60 s of short connections instead of a scaled window).
const LongEnv = "FWPLANE_LONG_TESTS"

func long() bool { return os.Getenv(LongEnv) == "1" }

// SweepSlack bounds how late an expired session may still be listed: both
// backends sweep once a second by default, and a loaded machine delays a
// sweep by a little more.
const SweepSlack = 3 * time.Second

// anyConfig allows everything from clients to servers (any protocol, any
// port) and nothing back.
func anyConfig(e *Env) *dataplane.Config {
	c := Base(e.Lab)
	c.Policies = []dataplane.Policy{{FromZone: "clients", ToZone: "servers", Action: dataplane.ActionAllow}}
	return c
}

// longTimeouts sets every timeout to an hour: no session of a case ends
// by itself unless the case shortens its timeout.
func longTimeouts() dataplane.Timeouts {
	h := dataplane.Duration(time.Hour)
	return dataplane.Timeouts{TCP: h, TCPOpening: h, TCPClosing: h, TCPClosed: h, UDP: h, UDPUnreplied: h,
		ICMP: h, ICMPUnreplied: h, Other: h, OtherUnreplied: h}
}

// ClearAll ends every session (dataplane.SessionClearer: both backends
// are), so that a case's listings and exact counts see only its own flows.
func (e *Env) ClearAll(t testing.TB) int {
	t.Helper()
	sc, ok := e.DP.(dataplane.SessionClearer)
	if !ok {
		t.Fatalf("%s backend cannot clear sessions", e.Mode)
	}
	n, err := sc.ClearSessions(context.Background(), dataplane.SessionFilter{})
	if err != nil {
		t.Fatalf("ClearSessions: %v", err)
	}
	return n
}

// Settle waits until the named counters hold still for 300 ms (at most
// 5 s) and returns them: packets earlier cases left in flight (a late
// retransmission, an RST from a closed test server) are then counted
// before the case's baseline, never as the case's own.
func (e *Env) Settle(t testing.TB, names ...string) map[string]uint64 {
	t.Helper()
	last := e.Counters(t, names...)
	still := time.Now()
	deadline := still.Add(5 * time.Second)
	for time.Since(still) < 300*time.Millisecond && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		cur := e.Counters(t, names...)
		for _, n := range names {
			if cur[n] != last[n] {
				still = time.Now()
			}
		}
		last = cur
	}
	return last
}

// Exactly waits until every named counter has risen by at least its want
// over before (the backend may publish a moment late), then until they
// hold still, and reports each whose rise is not exactly want.
func (e *Env) Exactly(t testing.TB, before map[string]uint64, want map[string]uint64) {
	t.Helper()
	e.DeltaAtLeast(t, before, want)
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	d := Delta(before, e.Settle(t, names...))
	for _, n := range names {
		if d[n] != want[n] {
			t.Errorf("%s rose by %d, want exactly %d", n, d[n], want[n])
		}
	}
}

// SessionOf returns the listed session of protocol proto whose initiator
// is src.
func SessionOf(list []dataplane.Session, proto string, src netip.AddrPort) (dataplane.Session, bool) {
	for _, s := range list {
		if protoName(s.Protocol) == proto && s.Source == src.String() {
			return s, true
		}
	}
	return dataplane.Session{}, false
}

// SessionOfTuple returns the listed session of protocol proto from src
// to dst.
func SessionOfTuple(list []dataplane.Session, proto string, src, dst netip.AddrPort) (dataplane.Session, bool) {
	for _, s := range list {
		if protoName(s.Protocol) == proto && s.Source == src.String() && s.Destination == dst.String() {
			return s, true
		}
	}
	return dataplane.Session{}, false
}

// destOf returns a listed session's responder address.
func destOf(s dataplane.Session) netip.Addr {
	if ap, err := netip.ParseAddrPort(s.Destination); err == nil {
		return ap.Addr()
	}
	a, _ := netip.ParseAddr(s.Destination)
	return a
}

// WaitSessions polls the session listing until cond holds, failing the
// case after within; it returns the last listing.
func (e *Env) WaitSessions(t testing.TB, what string, within time.Duration, cond func([]dataplane.Session) bool) []dataplane.Session {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		list := e.Sessions(t)
		if cond(list) {
			return list
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitSession polls until the session of (proto, src) satisfies ok, and
// returns it; found is false in ok's argument when it is not listed.
func (e *Env) WaitSession(t testing.TB, proto string, src netip.AddrPort, what string, within time.Duration, ok func(s dataplane.Session, found bool) bool) dataplane.Session {
	t.Helper()
	var last dataplane.Session
	var found bool
	deadline := time.Now().Add(within)
	for {
		last, found = SessionOf(e.Sessions(t), proto, src)
		if ok(last, found) {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s session of %s %s: not within %s (last: %+v, listed %v)", what, proto, src, within, last, found)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ClientFrame builds a frame from the client (address and MAC) to dst
// through the firewall: TCP with flags, UDP, ICMP echo (port = echo id) or
// another protocol (a UDP frame with protocol number proto).
func (e *Env) ClientFrame(proto uint8, sport uint16, dst netip.AddrPort, tcpFlags uint8) []byte {
	l := e.Lab
	src := l.ClientAddr4
	if dst.Addr().Is6() {
		src = l.ClientAddr6
	}
	s := packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC, Src: netip.AddrPortFrom(src, sport), Dst: dst,
		TCPFlags: tcpFlags, TCPSeq: 1000, PayloadLen: 16}
	switch proto {
	case packet.ProtoTCP:
		s.PayloadLen = 0
		return packet.TCP(s)
	case packet.ProtoUDP:
		return packet.UDP(s)
	case packet.ProtoICMP:
		return packet.ICMPEcho(s, sport, 1)
	}
	return protoFrame(s, proto)
}

// ServerFrame builds a TCP frame from src (on the server link) to the
// client: a reply-direction packet from an address that sends none itself.
func (e *Env) ServerFrame(src netip.AddrPort, cport uint16, tcpFlags uint8) []byte {
	l := e.Lab
	return packet.TCP(packet.Spec{SrcMAC: l.ServerMAC, DstMAC: l.FwServerMAC, Src: src,
		Dst: netip.AddrPortFrom(l.ClientAddr4, cport), TCPFlags: tcpFlags, TCPSeq: 5000, TCPAck: 1001})
}

// Blackhole returns an IPv4 address of the server link that nothing
// answers: the firewall has a permanent neighbour entry for it with a MAC
// no host owns, so the firewall forwards to it (no neighbour resolution
// involved) and the server's kernel discards the frames (another host's).
// It makes sessions that stay unreplied. n picks one of several (1-50);
// the entry is removed in t's cleanup.
func (e *Env) Blackhole(t testing.TB, n byte) netip.Addr {
	t.Helper()
	l := e.Lab
	b := l.ServerNet4.Addr().As4()
	b[3] = 200 + n
	a := netip.AddrFrom4(b)
	mac := net.HardwareAddr{0x02, 0xfb, 0x1a, 0xc4, 0x00, 200 + n}
	neigh := func(add bool) error {
		return l.Firewall.Do(func() error {
			lk, err := netlink.LinkByName(l.FwServerIf)
			if err != nil {
				return err
			}
			nb := &netlink.Neigh{LinkIndex: lk.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
				IP: a.AsSlice(), HardwareAddr: mac}
			if add {
				return netlink.NeighSet(nb)
			}
			return netlink.NeighDel(nb)
		})
	}
	if err := neigh(true); err != nil {
		t.Fatalf("blackhole %s: %v", a, err)
	}
	t.Cleanup(func() {
		if err := neigh(false); err != nil {
			t.Errorf("remove blackhole %s: %v", a, err)
		}
	})
	return a
}

// Holder is a TCP server on the lab's server (ServerAddr4:PortHold) that
// accepts connections, echoes their first 4 bytes and keeps them open
// until told otherwise: connections that stay in one TCP state (opened,
// half-closed) as long as a case needs. It is safe for concurrent use.
type Holder struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[string]*net.TCPConn // by the client's address:port
	wg    sync.WaitGroup
}

// StartHolder starts a Holder; t's cleanup resets every connection it
// still holds (an RST: no retransmission outlives the case) and stops it.
func (e *Env) StartHolder(t testing.TB) *Holder {
	t.Helper()
	l := e.Lab
	h := &Holder{conns: map[string]*net.TCPConn{}}
	err := l.Lab.Server.Do(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return errors.Join(err, serr)
		}}
		ln, err := lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(l.ServerAddr4, PortHold).String())
		h.ln = ln
		return err
	})
	if err != nil {
		t.Fatalf("holder: %v", err)
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := h.ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			h.mu.Lock()
			h.conns[c.RemoteAddr().String()] = tc
			h.mu.Unlock()
			go func() {
				buf := make([]byte, 4)
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(tc, buf); err == nil {
					tc.Write(buf)
				}
				tc.SetDeadline(time.Time{})
			}()
		}
	}()
	t.Cleanup(func() {
		h.ln.Close()
		h.wg.Wait()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.conns {
			c.SetLinger(0)
			c.Close()
		}
	})
	return h
}

// Dial connects from the client to the Holder and exchanges 4 bytes (the
// handshake completed both ways); the connection stays open. It returns
// the connection and its client address.
func (h *Holder) Dial(t testing.TB, e *Env) (*net.TCPConn, netip.AddrPort) {
	t.Helper()
	l := e.Lab
	var conn *net.TCPConn
	err := l.Lab.Client.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(l.ServerAddr4, PortHold).String(), 3*time.Second)
		if err == nil {
			conn = c.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		t.Fatalf("connect to the holder: %v", err)
	}
	t.Cleanup(func() { conn.SetLinger(0); conn.Close() })
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 4)
	if _, err := conn.Write([]byte("hold")); err != nil {
		t.Fatalf("write to the holder: %v", err)
	}
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("read from the holder: %v", err)
	}
	conn.SetDeadline(time.Time{})
	return conn, netip.MustParseAddrPort(conn.LocalAddr().String())
}

// Close closes the server's side of the connection from client src: a
// FIN, or an RST when reset.
func (h *Holder) Close(t testing.TB, src netip.AddrPort, reset bool) {
	t.Helper()
	h.mu.Lock()
	c, ok := h.conns[src.String()]
	delete(h.conns, src.String())
	h.mu.Unlock()
	if !ok {
		t.Fatalf("the holder has no connection from %s", src)
	}
	if reset {
		c.SetLinger(0)
	}
	c.Close()
}

// configProblems returns the problems of a *dataplane.ConfigError.
func configProblems(err error) ([]dataplane.Problem, bool) {
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) {
		return nil, false
	}
	return ce.Problems, true
}

// describe lists sessions for a failure message.
func describe(list []dataplane.Session) string {
	s := ""
	for _, se := range list {
		s += fmt.Sprintf("\n  %s %s -> %s %s assured=%v %s->%s", se.Protocol, se.Source, se.Destination, se.State, se.Assured, se.FromZone, se.ToZone)
	}
	return s
}

// QuiesceTCP aborts every TCP connection of the lab's client and server
// (`ss -K`, SOCK_DESTROY: each sends an RST) and lets the counters
// settle. Earlier cases' connections whose sessions a config change ended
// retransmit their FINs and data for minutes with growing gaps, each a
// packet without a SYN the dataplane drops and counts; a case that counts
// such drops exactly starts from a quiet lab instead of hoping for one.
func (e *Env) QuiesceTCP(t testing.TB) {
	t.Helper()
	for _, ns := range []*netlab.NS{e.Lab.Lab.Client, e.Lab.Lab.Server} {
		out, err := exec.Command("ip", "netns", "exec", ns.Name, "ss", "-K", "-t", "state", "connected").CombinedOutput()
		if err != nil {
			t.Fatalf("abort TCP connections in %s: %v: %s", ns.Name, err, out)
		}
	}
}
