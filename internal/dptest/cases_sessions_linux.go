package dptest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/packet"
)

// The session model (dataplane/session.go), one case per rule, each with
// the same traffic, verdicts and counters on every backend.

func init() {
	Register(
		Case{Name: "sessions/tcp syn check and pickup", Run: synCheck},
		Case{Name: "sessions/tcp states", Config: tcpStatesConfig, Run: tcpStates},
		Case{Name: "sessions/tcp reopen", Config: tcpStatesConfig, Run: tcpReopen},
		Case{Name: "sessions/timeouts by state", Config: anyConfig, Run: timeoutsByState},
		Case{Name: "sessions/zone mismatch", Config: sinkZoneConfig, Run: zoneMismatch},
		Case{Name: "sessions/policy change", Run: policyChange},
		Case{Name: "sessions/clear with a filter", Config: anyConfig, Run: clearWithFilter},
	)
}

// synCheck: a TCP packet without a session that is not a pure SYN creates
// no session and is dropped, counted as dropped_tcp_not_syn (never as a
// policy drop), whatever its flags. With sessions.tcp_pickup a mid-stream
// packet opens an established, unassured session (an RST never does);
// a packet back from the responder makes it assured, an RST back does not.
func synCheck(t testing.TB, e *Env) {
	l := e.Lab
	notSYN := dataplane.CounterDropTCPNotSYN
	dst := netip.AddrPortFrom(l.ServerAddr4, PortTCP)
	sport := e.Port()
	cap, err := Capture(l.Lab.Server, l.ServerIf)
	if err != nil {
		t.Fatal(err)
	}
	defer cap.Close()
	e.QuiesceTCP(t)
	before := e.Settle(t, notSYN, "dropped_policy")
	var frames [][]byte
	for _, f := range []uint8{packet.TCPAck, packet.TCPSyn | packet.TCPAck, packet.TCPFin | packet.TCPAck,
		packet.TCPPsh | packet.TCPAck, packet.TCPRst, packet.TCPRst | packet.TCPAck} {
		frames = append(frames, e.ClientFrame(packet.ProtoTCP, sport, dst, f))
	}
	if err := SendFrames(l.Lab.Client, l.ClientIf, frames...); err != nil {
		t.Fatal(err)
	}
	e.Exactly(t, before, map[string]uint64{notSYN: uint64(len(frames)), "dropped_policy": 0})
	if n := cap.Count(Silence, func(i packet.Info) bool { return i.Src.Port() == sport }); n != 0 {
		t.Errorf("%d packets without a SYN reached the server", n)
	}
	if s, ok := SessionOf(e.Sessions(t), "tcp", netip.AddrPortFrom(l.ClientAddr4, sport)); ok {
		t.Errorf("a packet without a SYN created a session: %+v", s)
	}

	// Mid-stream pickup, towards an address that answers nothing: the
	// test plays the responder.
	bh := netip.AddrPortFrom(e.Blackhole(t, 1), PortTCP)
	c := e.Applied.Clone()
	c.Sessions.TCPPickup = true
	e.Apply(t, c)
	before = e.Settle(t, notSYN)
	picked, reset := e.Port(), e.Port()
	send := func(ns string, f []byte) {
		t.Helper()
		var err error
		if ns == "client" {
			err = SendFrames(l.Lab.Client, l.ClientIf, f)
		} else {
			err = SendFrames(l.Lab.Server, l.ServerIf, f)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	send("client", e.ClientFrame(packet.ProtoTCP, picked, bh, packet.TCPRst))
	send("client", e.ClientFrame(packet.ProtoTCP, picked, bh, packet.TCPPsh|packet.TCPAck))
	src := netip.AddrPortFrom(l.ClientAddr4, picked)
	s := e.WaitSession(t, "tcp", src, "picked up", 3*time.Second, func(_ dataplane.Session, ok bool) bool { return ok })
	if s.State != dataplane.StateEstablished || s.Assured || s.FromZone != "clients" || s.ToZone != "servers" {
		t.Errorf("picked-up session: %s assured=%v %s->%s, want established, unassured, clients->servers", s.State, s.Assured, s.FromZone, s.ToZone)
	}
	// The responder answers: assured (the client's kernel then resets the
	// connection it never had, which keeps it assured).
	send("server", e.ServerFrame(bh, picked, packet.TCPAck))
	e.WaitSession(t, "tcp", src, "assured by the reply", 3*time.Second, func(s dataplane.Session, ok bool) bool { return ok && s.Assured })

	send("client", e.ClientFrame(packet.ProtoTCP, reset, bh, packet.TCPAck))
	rsrc := netip.AddrPortFrom(l.ClientAddr4, reset)
	e.WaitSession(t, "tcp", rsrc, "picked up", 3*time.Second, func(_ dataplane.Session, ok bool) bool { return ok })
	send("server", e.ServerFrame(bh, reset, packet.TCPRst|packet.TCPAck))
	s = e.WaitSession(t, "tcp", rsrc, "closed by the responder's RST", 3*time.Second,
		func(s dataplane.Session, ok bool) bool { return ok && s.State == dataplane.StateClosed })
	if s.Assured {
		t.Errorf("a picked-up session answered only by an RST is assured; an RST completes nothing")
	}
	e.Exactly(t, before, map[string]uint64{notSYN: 1}) // the RST that opened nothing
}

// tcpStatesConfig: Base, the holder's port, and long timeouts but for
// closed sessions (2 s).
func tcpStatesConfig(e *Env) *dataplane.Config {
	c := Base(e.Lab)
	c.Policies = append(c.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP,
		DestinationPorts: []dataplane.PortRange{{First: PortHold, Last: PortHold}}, Action: dataplane.ActionAllow})
	c.Timeouts = longTimeouts()
	c.Timeouts.TCPClosed = dataplane.Duration(2 * time.Second)
	return c
}

// tcpStates walks real connections through the TCP states: the handshake
// makes an established, assured session between the two zones; a FIN
// from the client makes it closing, one from the server closed; an RST
// closes at once; a closed session leaves after tcp_closed, not before.
func tcpStates(t testing.TB, e *Env) {
	h := e.StartHolder(t)
	closed := time.Duration(e.Applied.Timeouts.TCPClosed)
	state := func(conn string, src netip.AddrPort, want dataplane.SessionState) dataplane.Session {
		t.Helper()
		s := e.WaitSession(t, "tcp", src, conn+" "+want.String(), 3*time.Second,
			func(s dataplane.Session, ok bool) bool { return ok && s.State == want })
		if !s.Assured || s.FromZone != "clients" || s.ToZone != "servers" {
			t.Errorf("%s %s: assured=%v %s->%s, want assured, clients->servers", conn, want, s.Assured, s.FromZone, s.ToZone)
		}
		return s
	}
	gone := func(conn string, src netip.AddrPort, since time.Time) {
		t.Helper()
		e.WaitSession(t, "tcp", src, conn+" ended by tcp_closed", closed+SweepSlack,
			func(_ dataplane.Session, ok bool) bool { return !ok })
		// (Less a little: the eBPF backend's clock is the coarse one.)
		if d := time.Since(since); d < closed-10*time.Millisecond {
			t.Errorf("%s: the closed session left %s after it closed, before its %s timeout", conn, d, closed)
		}
	}

	finConn, fin := h.Dial(t, e)
	state("fin", fin, dataplane.StateEstablished)
	if err := finConn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	state("fin", fin, dataplane.StateClosing)
	finClosed := time.Now() // the last packets (FIN, ACK) follow this
	h.Close(t, fin, false)
	state("fin", fin, dataplane.StateClosed)

	rstConn, rst := h.Dial(t, e)
	state("rst", rst, dataplane.StateEstablished)
	rstClosed := time.Now()
	rstConn.SetLinger(0)
	rstConn.Close()
	state("rst", rst, dataplane.StateClosed)

	gone("fin", fin, finClosed)
	gone("rst", rst, rstClosed)
}

// tcpReopen: a new connection from the port of one just reset reuses its
// tuple: its SYN meets the closed session, which ends
// (sessions_reopened), and opens a new one that its handshake makes
// established and assured. The reconnect follows the reset at once, as
// a client's retry would.
//
// The first connection binds its port explicitly (port 0: the kernel
// picks one no socket holds), not by connect: connect may hand out a
// port that a TIME_WAIT socket of an earlier case's connection to
// another destination still holds (netlab.Handshakes turns on
// tcp_tw_reuse in the client's namespace), and binding that port again
// for the reconnect then fails with EADDRINUSE. An explicitly bound port
// is never shared by connect, and the reset leaves no TIME_WAIT socket.
func tcpReopen(t testing.TB, e *Env) {
	e.StartHolder(t)                               // closed by the test's cleanup
	reopened := e.Counters(t, "sessions_reopened") // moved only by reopening
	dial := func(local netip.AddrPort) (*net.TCPConn, error) {
		var c *net.TCPConn
		err := e.Lab.Lab.Client.Do(func() error {
			d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(local)}
			nc, err := d.Dial("tcp", netip.AddrPortFrom(e.Lab.ServerAddr4, PortHold).String())
			if err == nil {
				c = nc.(*net.TCPConn)
			}
			return err
		})
		return c, err
	}
	conn, err := dial(netip.AddrPortFrom(e.Lab.ClientAddr4, 0))
	if err != nil {
		t.Fatalf("connect to the holder: %v", err)
	}
	src := netip.MustParseAddrPort(conn.LocalAddr().String())
	err = echo(conn) // handshake and data: established
	conn.SetLinger(0)
	conn.Close()
	if err != nil {
		t.Fatalf("exchange on the first connection: %v", err)
	}
	again, err := dial(src)
	if err != nil {
		t.Fatalf("reconnect from %s: %v", src, err)
	}
	defer func() { again.SetLinger(0); again.Close() }()
	if err := echo(again); err != nil { // the Holder echoes 4 bytes
		t.Fatalf("exchange on the new connection: %v", err)
	}
	s := e.WaitSession(t, "tcp", src, "reopened", 3*time.Second, func(s dataplane.Session, ok bool) bool {
		return ok && s.State == dataplane.StateEstablished
	})
	if !s.Assured {
		t.Errorf("reopened session not assured after its handshake: %+v", s)
	}
	e.Exactly(t, reopened, map[string]uint64{"sessions_reopened": 1})
}

// timeoutsByState: each unassured or closing state has its own idle
// timeout, and only that field ends sessions in that state. Every field
// under test is short (1 s) in a different subset of three phases (its
// code, below: no two alike), every other timeout an hour; each phase
// makes a fresh session in each state and checks that exactly those of
// the short fields leave. A backend that used one field for another
// state would end a session the code says stays, or keep one it says
// goes. Sessions that must stay throughout (an established TCP
// connection, replied UDP, ICMP and protocol-132 flows) check that no
// short timeout leaks into another state.
func timeoutsByState(t testing.TB, e *Env) {
	l := e.Lab
	e.ClearAll(t) // the replied sessions below are the only ones of their kind
	h := e.StartHolder(t)
	type field struct {
		name  string
		code  int // bit p: short in phase p
		set   func(*dataplane.Timeouts, dataplane.Duration)
		proto string
		// open makes a session in the field's state for phase p and
		// returns how to find it.
		open func(p int) func(dataplane.Session) bool
	}
	var bh [3]netip.Addr
	for p := range bh {
		bh[p] = e.Blackhole(t, byte(10+p))
	}
	send := func(f []byte) {
		t.Helper()
		if err := SendFrames(l.Lab.Client, l.ClientIf, f); err != nil {
			t.Fatal(err)
		}
	}
	byDest := func(proto string, p int) func(dataplane.Session) bool {
		return func(s dataplane.Session) bool { return protoName(s.Protocol) == proto && destOf(s) == bh[p] }
	}
	bySrc := func(src netip.AddrPort) func(dataplane.Session) bool {
		return func(s dataplane.Session) bool { return protoName(s.Protocol) == "tcp" && s.Source == src.String() }
	}
	fields := []field{
		{"tcp_opening", 0b001, func(t *dataplane.Timeouts, d dataplane.Duration) { t.TCPOpening = d }, "tcp",
			func(p int) func(dataplane.Session) bool {
				send(e.ClientFrame(packet.ProtoTCP, e.Port(), netip.AddrPortFrom(bh[p], PortTCP), packet.TCPSyn))
				return byDest("tcp", p)
			}},
		{"tcp_closing", 0b010, func(t *dataplane.Timeouts, d dataplane.Duration) { t.TCPClosing = d }, "tcp",
			func(int) func(dataplane.Session) bool {
				c, src := h.Dial(t, e)
				if err := c.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				e.WaitSession(t, "tcp", src, "half-closed", 3*time.Second, func(s dataplane.Session, ok bool) bool {
					return ok && s.State == dataplane.StateClosing
				})
				return bySrc(src)
			}},
		{"tcp_closed", 0b011, func(t *dataplane.Timeouts, d dataplane.Duration) { t.TCPClosed = d }, "tcp",
			func(int) func(dataplane.Session) bool {
				c, src := h.Dial(t, e)
				c.SetLinger(0)
				c.Close()
				e.WaitSession(t, "tcp", src, "reset", 3*time.Second, func(s dataplane.Session, ok bool) bool {
					return !ok || s.State == dataplane.StateClosed
				})
				return bySrc(src)
			}},
		{"udp_unreplied", 0b100, func(t *dataplane.Timeouts, d dataplane.Duration) { t.UDPUnreplied = d }, "udp",
			func(p int) func(dataplane.Session) bool {
				send(e.ClientFrame(packet.ProtoUDP, e.Port(), netip.AddrPortFrom(bh[p], PortUDP), 0))
				return byDest("udp", p)
			}},
		{"icmp_unreplied", 0b101, func(t *dataplane.Timeouts, d dataplane.Duration) { t.ICMPUnreplied = d }, "icmp",
			func(p int) func(dataplane.Session) bool {
				send(e.ClientFrame(packet.ProtoICMP, e.Port(), netip.AddrPortFrom(bh[p], 0), 0))
				return byDest("icmp", p)
			}},
		{"other_unreplied", 0b110, func(t *dataplane.Timeouts, d dataplane.Duration) { t.OtherUnreplied = d }, "other",
			func(p int) func(dataplane.Session) bool {
				send(e.ClientFrame(132, 0, netip.AddrPortFrom(bh[p], 0), 0))
				return byDest("other", p)
			}},
	}
	// Sessions that stay in every phase: no field under test is theirs.
	_, estab := h.Dial(t, e)
	udpSrc := e.Port()
	if p := UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortUDP), UDPOptions{SrcPort: udpSrc}); p.Outcome != Answered {
		t.Fatalf("udp flow: %s", p)
	}
	if p := Ping(l.Lab.Client, l.ServerAddr4, e.Port(), 2*time.Second); p.Outcome != Answered {
		t.Fatalf("icmp flow: %s", p)
	}
	if err := otherFlow(l); err != nil {
		t.Fatalf("protocol 132 flow: %v", err)
	}
	stays := map[string]func(dataplane.Session) bool{
		"established tcp": bySrc(estab),
		"replied udp": func(s dataplane.Session) bool {
			return protoName(s.Protocol) == "udp" && s.Source == netip.AddrPortFrom(l.ClientAddr4, udpSrc).String()
		},
		"replied icmp": func(s dataplane.Session) bool {
			return protoName(s.Protocol) == "icmp" && destOf(s) == l.ServerAddr4 && s.State == dataplane.StateReplied
		},
		"replied other": func(s dataplane.Session) bool {
			return protoName(s.Protocol) == "other" && destOf(s) == l.ServerAddr4 && s.State == dataplane.StateReplied
		},
	}
	short, hour := dataplane.Duration(time.Second), dataplane.Duration(time.Hour)
	for phase := range 3 {
		c := e.Applied.Clone()
		c.Timeouts = longTimeouts()
		for _, f := range fields {
			d := hour
			if f.code&(1<<phase) != 0 {
				d = short
			}
			f.set(&c.Timeouts, d)
		}
		e.Apply(t, c)
		created := e.Settle(t, "sessions_created_ipv4")
		find := make([]func(dataplane.Session) bool, len(fields))
		for i, f := range fields {
			find[i] = f.open(phase)
		}
		// One new session per field, whatever leaves when.
		e.Exactly(t, created, map[string]uint64{"sessions_created_ipv4": uint64(len(fields))})
		listed := func(list []dataplane.Session, match func(dataplane.Session) bool) bool {
			for _, s := range list {
				if match(s) {
					return true
				}
			}
			return false
		}
		start := time.Now()
		list := e.WaitSessions(t, fmt.Sprintf("phase %d: the short fields' sessions end", phase), time.Second+SweepSlack,
			func(list []dataplane.Session) bool {
				for i, f := range fields {
					if f.code&(1<<phase) != 0 && listed(list, find[i]) {
						return false
					}
				}
				return true
			})
		if d := time.Since(start); d > time.Second+SweepSlack {
			t.Errorf("phase %d: the short sessions took %s", phase, d)
		}
		for i, f := range fields {
			if f.code&(1<<phase) == 0 && !listed(list, find[i]) {
				t.Errorf("phase %d: the %s session (%s: an hour) left with the 1 s ones:%s", phase, f.proto, f.name, describe(list))
			}
		}
		var names []string
		for n := range stays {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if !listed(list, stays[n]) {
				t.Errorf("phase %d: the %s session left (its timeout is an hour)", phase, n)
			}
		}
	}
}

// sinkZoneConfig: Base, and the sink link as a third zone ("sink") that
// may reach nothing.
func sinkZoneConfig(e *Env) *dataplane.Config {
	c := Base(e.Lab)
	c.Zones = append(c.Zones, dataplane.Zone{Name: "sink"})
	c.Interfaces = append(c.Interfaces, dataplane.Interface{Name: e.Lab.FwSinkIf, Zone: "sink"})
	return c
}

// zoneMismatch: packets with a live session's tuple arriving from an
// interface of another zone (the sink) are dropped and counted, in both
// directions, reach neither end, and leave the session as it was; the
// flow itself keeps passing.
func zoneMismatch(t testing.TB, e *Env) {
	l := e.Lab
	sport := e.Port()
	client := netip.AddrPortFrom(l.ClientAddr4, sport)
	server := netip.AddrPortFrom(l.ServerAddr4, PortUDP)
	if p := UDP(l.Lab.Client, server, UDPOptions{SrcPort: sport}); p.Outcome != Answered {
		t.Fatalf("udp flow: %s", p)
	}
	s0 := e.WaitSession(t, "udp", client, "replied", 3*time.Second, func(s dataplane.Session, ok bool) bool { return ok && s.Assured })
	atClient, err := Capture(l.Lab.Client, l.ClientIf)
	if err != nil {
		t.Fatal(err)
	}
	defer atClient.Close()
	atServer, err := Capture(l.Lab.Server, l.ServerIf)
	if err != nil {
		t.Fatal(err)
	}
	defer atServer.Close()
	before := e.Settle(t, dataplane.CounterDropZoneMismatch, "dropped_policy")
	var spoofs [][]byte
	for _, sp := range []packet.Spec{
		{Src: server, Dst: client}, // a "reply" from the sink zone
		{Src: client, Dst: server}, // the initiator's direction from the sink zone
	} {
		sp.SrcMAC, sp.DstMAC, sp.PayloadLen = l.SinkMAC, l.FwSinkMAC, 12
		spoofs = append(spoofs, packet.UDP(sp))
	}
	if err := SendFrames(l.Lab.Sink, l.SinkIf, spoofs...); err != nil {
		t.Fatal(err)
	}
	e.Exactly(t, before, map[string]uint64{dataplane.CounterDropZoneMismatch: 2, "dropped_policy": 0})
	match := func(i packet.Info) bool { return i.Src.Port() == sport || i.Dst.Port() == sport }
	n := make(chan int, 1)
	go func() { n <- atServer.Count(Silence, match) }()
	if c := atClient.Count(Silence, match); c != 0 {
		t.Errorf("%d spoofed packets reached the client", c)
	}
	if c := <-n; c != 0 {
		t.Errorf("%d spoofed packets reached the server", c)
	}
	s, ok := SessionOf(e.Sessions(t), "udp", client)
	if !ok || s.State != s0.State || s.Assured != s0.Assured || s.FromZone != "clients" || s.ToZone != "servers" {
		t.Errorf("session after the spoofs: %+v (listed %v), was %+v", s, ok, s0)
	}
	if p := UDP(l.Lab.Client, server, UDPOptions{SrcPort: sport}); p.Outcome != Answered {
		t.Errorf("the flow after the spoofs: %s", p)
	}
}

// policyChange: an Apply whose policy denies live flows ends their
// sessions (sessions_ended_by_policy, exactly one per session) and leaves
// the others; the next packet of an ended flow meets the policy. With
// sessions.keep_on_policy_change the same Apply ends nothing and the
// flows keep passing.
func policyChange(t testing.TB, e *Env) {
	l := e.Lab
	server := netip.AddrPortFrom(l.ServerAddr4, PortUDP)
	ended := dataplane.CounterSessionsEndedByPolicy
	for _, keep := range []bool{false, true} {
		e.Apply(t, Base(l))
		e.ClearAll(t)
		ports := []uint16{e.Port(), e.Port(), e.Port()}
		for _, p := range ports {
			if pr := UDP(l.Lab.Client, server, UDPOptions{SrcPort: p}); pr.Outcome != Answered {
				t.Fatalf("udp flow from %d: %s", p, pr)
			}
		}
		tcpSrc := e.Port()
		tcp, err := holdEcho(l, tcpSrc)
		if err != nil {
			t.Fatalf("tcp flow: %v", err)
		}
		deny := Base(l)
		deny.Policies = deny.Policies[:1] // TCP only: the UDP flows are denied now
		deny.Sessions.KeepOnPolicyChange = keep
		before := e.Settle(t, ended, "dropped_policy")
		e.Apply(t, deny)
		want := uint64(len(ports))
		if keep {
			want = 0
		}
		e.Exactly(t, before, map[string]uint64{ended: want})
		list := e.Sessions(t)
		for _, p := range ports {
			if _, ok := SessionOf(list, "udp", netip.AddrPortFrom(l.ClientAddr4, p)); ok != keep {
				t.Errorf("keep_on_policy_change %v: the denied flow from %d still listed: %v", keep, p, ok)
			}
		}
		if _, ok := SessionOf(list, "tcp", netip.AddrPortFrom(l.ClientAddr4, tcpSrc)); !ok {
			t.Errorf("keep_on_policy_change %v: the allowed TCP flow lost its session", keep)
		}
		want0 := Silent
		if keep {
			want0 = Answered
		}
		before = e.Settle(t, "dropped_policy")
		Expect(t, Flow{Name: fmt.Sprintf("keep_on_policy_change %v: the denied flow's next packet", keep), Want: want0, Run: func() Probe {
			return UDP(l.Lab.Client, server, UDPOptions{SrcPort: ports[0], Timeout: Silence})
		}})
		var policy uint64
		if !keep {
			policy = 1
		}
		e.Exactly(t, before, map[string]uint64{"dropped_policy": policy})
		if err := echo(tcp); err != nil {
			t.Errorf("keep_on_policy_change %v: the allowed TCP flow after the change: %v", keep, err)
		}
		tcp.SetLinger(0)
		tcp.Close()
	}
}

// holdEcho connects from the client's port sport to the server's TCP
// echo and exchanges a few bytes; the connection stays open.
func holdEcho(l *Lab, sport uint16) (*net.TCPConn, error) {
	var conn *net.TCPConn
	err := l.Lab.Client.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: l.ClientAddr4.AsSlice(), Port: int(sport)}}
		c, err := d.Dial("tcp", netip.AddrPortFrom(l.ServerAddr4, PortTCP).String())
		if err == nil {
			conn = c.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := echo(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// echo sends 4 bytes on an echo connection and reads them back.
func echo(c *net.TCPConn) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("echo")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	_, err := io.ReadFull(c, buf)
	return err
}

// clearWithFilter: ClearSessions ends exactly the sessions its filter
// selects (every set field must match) and counts them; a bad filter is
// refused naming every bad field, and ends nothing.
func clearWithFilter(t testing.TB, e *Env) {
	l := e.Lab
	sc, ok := e.DP.(dataplane.SessionClearer)
	if !ok {
		t.Fatalf("%s backend cannot clear sessions", e.Mode)
	}
	ctx := context.Background()
	e.ClearAll(t)
	var udp4 []uint16
	for range 3 {
		p := e.Port()
		udp4 = append(udp4, p)
		if pr := UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortUDP), UDPOptions{SrcPort: p}); pr.Outcome != Answered {
			t.Fatalf("udp4: %s", pr)
		}
	}
	Expect(t,
		e.UDPFlow("udp6 (another family)", l.ServerAddr6, PortUDP, Answered),
		e.UDPFlow("udp4 to another port", l.ServerAddr4, PortOther, Answered),
		e.PingFlow("icmp (another protocol)", l.ServerAddr4, Answered),
	)
	tcpSrc := e.Port()
	tcp, err := holdEcho(l, tcpSrc)
	if err != nil {
		t.Fatalf("tcp flow: %v", err)
	}
	defer func() { tcp.SetLinger(0); tcp.Close() }()
	all := e.Sessions(t)
	if len(all) != 7 {
		t.Fatalf("%d sessions, want the case's 7:%s", len(all), describe(all))
	}

	_, err = sc.ClearSessions(ctx, dataplane.SessionFilter{Protocol: "sctpish", Address: "10.0.0.300", Port: PortUDP})
	probs, ok := configProblems(err)
	fields := map[string]bool{}
	for _, p := range probs {
		fields[p.Field] = true
	}
	if !ok || !fields["protocol"] || !fields["address"] || len(probs) != 2 {
		t.Errorf("bad filter: %v, want a ConfigError naming protocol and address", err)
	}
	if n := len(e.Sessions(t)); n != len(all) {
		t.Errorf("a refused filter ended %d sessions", len(all)-n)
	}

	before := e.Counters(t, dataplane.CounterSessionsCleared)
	n, err := sc.ClearSessions(ctx, dataplane.SessionFilter{Protocol: "udp", Address: l.ServerNet4.String(), Port: PortUDP, Zone: "servers"})
	if err != nil || n != len(udp4) {
		t.Errorf("ClearSessions(udp, %s, %d, servers) = %d, %v; want the %d UDP flows to it", l.ServerNet4, PortUDP, n, err, len(udp4))
	}
	e.Exactly(t, before, map[string]uint64{dataplane.CounterSessionsCleared: uint64(len(udp4))})
	left := e.Sessions(t)
	for _, p := range udp4 {
		if _, ok := SessionOf(left, "udp", netip.AddrPortFrom(l.ClientAddr4, p)); ok {
			t.Errorf("the cleared flow from %d is still listed", p)
		}
	}
	if len(left) != len(all)-len(udp4) {
		t.Errorf("%d sessions left, want %d:%s", len(left), len(all)-len(udp4), describe(left))
	}
	if err := echo(tcp); err != nil {
		t.Errorf("the TCP flow after clearing UDP ones: %v", err)
	}
	// A cleared flow is new again: its next packet meets the policy,
	// which allows it.
	if p := UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortUDP), UDPOptions{SrcPort: udp4[0]}); p.Outcome != Answered {
		t.Errorf("a cleared flow's next packet: %s", p)
	}
}
