package userspacebackend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
)

// rawSender sends whole Ethernet frames out of an interface of a
// namespace through an AF_PACKET socket: many distinct flows at a few
// microseconds per frame, where a live-frames flood repeats one frame.
type rawSender struct{ fd int }

func newRawSender(t testing.TB, ns *netlab.NS, iface string) *rawSender {
	t.Helper()
	s := &rawSender{fd: -1}
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		s.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifc.Index})
	})
	if s.fd >= 0 {
		t.Cleanup(func() { unix.Close(s.fd) })
	}
	if err != nil {
		t.Fatalf("raw socket on %s: %v", iface, err)
	}
	return s
}

func (s *rawSender) send(t testing.TB, frame []byte) {
	t.Helper()
	for {
		_, err := unix.Write(s.fd, frame)
		if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
			time.Sleep(50 * time.Microsecond) // the qdisc is full: let it drain
			continue
		}
		if err != nil {
			t.Fatalf("send frame: %v", err)
		}
		return
	}
}

// sessionOf returns the listed session whose initiator is src (an
// address:port string) and protocol proto.
func sessionOf(t testing.TB, b *Backend, proto, src string) (dataplane.Session, bool) {
	t.Helper()
	list, _, err := b.Sessions(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Protocol == proto && s.Source == src {
			return s, true
		}
	}
	return dataplane.Session{}, false
}

// waitSession polls until the session of src satisfies ok, and returns
// it, or fails at the deadline.
func waitSession(t testing.TB, b *Backend, proto, src string, what string, ok func(dataplane.Session, bool) bool) dataplane.Session {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, found := sessionOf(t, b, proto, src)
		if ok(s, found) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s %s never %s: last %+v (found %v)", proto, src, what, s, found)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestIntegrationTCPStates: a TCP ACK without a session creates none and
// is dropped (dropped_tcp_not_syn), unless tcp_pickup, which creates an
// established, unassured session; SYN, SYN-ACK, ACK (a real connection)
// make an assured, established session between the two zones; FIN both
// ways and an RST move it to closed, whose short timeout ends it.
func TestIntegrationTCPStates(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	cfg := netlabConfig(l)
	cfg.Timeouts.TCPClosing = dataplane.Duration(2 * time.Second)
	cfg.Timeouts.TCPClosed = dataplane.Duration(time.Second)
	b := newBackend(t, e, nil, cfg)
	raw := newRawSender(t, l.Client, l.ClientIf)

	ackFrame := packet.TCP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4, 41000), Dst: netip.AddrPortFrom(l.ServerAddr4, portTCP), TCPFlags: packet.TCPAck})
	before := counter(t, b, dataplane.CounterDropTCPNotSYN)
	raw.send(t, ackFrame)
	if n := waitCounter(t, b, dataplane.CounterDropTCPNotSYN, before+1); n != before+1 {
		t.Fatalf("%s rose by %d, want 1", dataplane.CounterDropTCPNotSYN, n-before)
	}
	if s, ok := sessionOf(t, b, "tcp", netip.AddrPortFrom(l.ClientAddr4, 41000).String()); ok {
		t.Errorf("a bare ACK created a session: %+v", s)
	}
	pickup := *cfg
	pickup.Sessions.TCPPickup = true
	if _, err := b.Apply(context.Background(), &pickup); err != nil {
		t.Fatal(err)
	}
	raw.send(t, ackFrame)
	// The server's kernel answers the stray ACK with an RST, which the
	// picked-up session forwards and which closes it (unassured: an RST
	// completes nothing).
	s := waitSession(t, b, "tcp", netip.AddrPortFrom(l.ClientAddr4, 41000).String(), "picked up and reset",
		func(s dataplane.Session, ok bool) bool { return ok && s.Packets == 2 })
	if s.State != dataplane.StateClosed || s.Assured || s.FromZone != "clients" || s.ToZone != "servers" {
		t.Errorf("picked-up session after the server's RST: %+v", s)
	}
	if _, err := b.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}

	for _, abort := range []bool{false, true} {
		var conn *net.TCPConn
		dst := netip.AddrPortFrom(l.ServerAddr4, portTCP)
		if err := l.Client.Do(func() error {
			c, err := net.DialTimeout("tcp", dst.String(), 3*time.Second)
			if err == nil {
				conn = c.(*net.TCPConn)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		src := conn.LocalAddr().String()
		s := waitSession(t, b, "tcp", src, "established", func(s dataplane.Session, ok bool) bool { return ok && s.State == dataplane.StateEstablished })
		if !s.Assured || s.FromZone != "clients" || s.ToZone != "servers" {
			t.Errorf("after the handshake: %+v", s)
		}
		msg := []byte("ping")
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, make([]byte, len(msg))); err != nil {
			t.Fatalf("echo: %v", err)
		}
		what := "closed by FIN, FIN"
		if abort {
			what = "closed by RST"
			conn.SetLinger(0) // Close sends an RST
		}
		conn.Close()
		s = waitSession(t, b, "tcp", src, what, func(s dataplane.Session, ok bool) bool { return !ok || s.State == dataplane.StateClosed })
		if s.State != dataplane.StateClosed || !s.Assured {
			t.Errorf("%s: %+v (a sweep ended it before it could be seen closed?)", what, s)
		}
		// tcp_closed is 1 s: the sweep (once a second) ends it soon after.
		waitSession(t, b, "tcp", src, "ended by the closed timeout", func(s dataplane.Session, ok bool) bool { return !ok })
	}
}

// TestIntegrationZoneMismatch: a packet with a live session's tuple that
// arrives on an interface of another zone is dropped and counted, both
// directions, and leaves the session as it was.
func TestIntegrationZoneMismatch(t *testing.T) {
	e := newLabEnvWith(t, 0, &netlab.Options{MirrorSink: true})
	l := e.l
	cfg := netlabConfig(l)
	cfg.Zones = append(cfg.Zones, dataplane.Zone{Name: "sink"})
	cfg.Interfaces = append(cfg.Interfaces, dataplane.Interface{Name: l.FwSinkIf, Zone: "sink"})
	b := newBackend(t, e, nil, cfg)
	const sport = 42000
	if err := udpRT(l, sport, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(l.ClientAddr4, sport)
	s0 := waitSession(t, b, "udp", src.String(), "replied", func(s dataplane.Session, ok bool) bool { return ok && s.Assured })
	raw := newRawSender(t, l.Sink, l.SinkIf)
	srv := netip.AddrPortFrom(l.ServerAddr4, portUDP)
	before := counter(t, b, dataplane.CounterDropZoneMismatch)
	for _, spoof := range []packet.Spec{
		{Src: srv, Dst: src}, // a "reply" from the sink zone
		{Src: src, Dst: srv}, // the initiator's direction from the sink zone
	} {
		spoof.SrcMAC, spoof.DstMAC, spoof.PayloadLen = l.SinkMAC, l.FwSinkMAC, 10
		raw.send(t, packet.UDP(spoof))
	}
	if n := waitCounter(t, b, dataplane.CounterDropZoneMismatch, before+2); n != before+2 {
		t.Errorf("%s rose by %d, want 2", dataplane.CounterDropZoneMismatch, n-before)
	}
	if s, _ := sessionOf(t, b, "udp", src.String()); s.Packets != s0.Packets || s.Bytes != s0.Bytes {
		t.Errorf("the spoofed packets touched the session: %+v, was %+v", s, s0)
	}
}

// TestIntegrationPolicyChange: an Apply whose policy denies a live flow
// ends its session (sessions_ended_by_policy) and its next packet meets
// the policy; with keep_on_policy_change the session survives.
func TestIntegrationPolicyChange(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, nil)
	ctx := context.Background()
	const sport = 43000
	src := netip.AddrPortFrom(l.ClientAddr4, sport).String()
	for _, keep := range []bool{true, false} {
		if _, err := b.Apply(ctx, netlabConfig(l)); err != nil {
			t.Fatal(err)
		}
		if err := udpRT(l, sport, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
			t.Fatal(err)
		}
		waitSession(t, b, "udp", src, "created", func(s dataplane.Session, ok bool) bool { return ok })
		deny := netlabConfig(l)
		deny.Policies = deny.Policies[:1] // TCP only: the UDP flow is denied now
		deny.Sessions.KeepOnPolicyChange = keep
		ended, dropped := counter(t, b, dataplane.CounterSessionsEndedByPolicy), counter(t, b, "dropped_policy")
		if _, err := b.Apply(ctx, deny); err != nil {
			t.Fatal(err)
		}
		_, found := sessionOf(t, b, "udp", src)
		err := udpRT(l, sport, l.ServerAddr4, portUDP, 300*time.Millisecond)
		n := counter(t, b, dataplane.CounterSessionsEndedByPolicy) - ended
		if keep {
			if !found || n != 0 || err != nil {
				t.Errorf("keep_on_policy_change: session kept %v, ended %d, round trip %v", found, n, err)
			}
			continue
		}
		if found || n != 1 || err == nil {
			t.Errorf("policy change: session kept %v, ended %d, round trip after it %v", found, n, err)
		}
		if d := waitCounter(t, b, "dropped_policy", dropped+1) - dropped; d == 0 {
			t.Error("the flow's next packet did not meet the policy")
		}
	}
}

// TestIntegrationClearSessions: ClearSessions ends what the filter
// selects, counts it, and names every bad filter field.
func TestIntegrationClearSessions(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, nil)
	ctx := context.Background()
	for i := range 3 {
		if err := udpRT(l, uint16(44000+i), l.ServerAddr4, portUDP, 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := tcpRT(l, l.ServerAddr6, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	_, err := b.ClearSessions(ctx, dataplane.SessionFilter{Protocol: "sctpish", Address: "10.0.0.300"})
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 2 || ce.Problems[0].Field != "protocol" || ce.Problems[1].Field != "address" {
		t.Errorf("bad filter: %v", err)
	}
	n, err := b.ClearSessions(ctx, dataplane.SessionFilter{Protocol: "udp", Address: l.ServerNet4.String(), Port: portUDP, Zone: "servers"})
	if err != nil || n != 3 {
		t.Errorf("cleared %d, %v; want the 3 UDP flows", n, err)
	}
	if v := counter(t, b, dataplane.CounterSessionsCleared); v != 3 {
		t.Errorf("%s = %d", dataplane.CounterSessionsCleared, v)
	}
	list, counts, _ := b.Sessions(ctx, 0)
	if len(list) != 1 || list[0].Protocol != "tcp" || counts.Total != 1 {
		t.Errorf("left: %+v", list)
	}
}

// TestIntegrationUnassuredFlood: while established UDP and TCP flows keep
// exchanging traffic, a flood of unanswered flows of twice the table size
// fills the table: new flows early-drop unassured sessions or are refused
// (counted), no established flow loses its session or a packet to the
// policy, the report shows the unassured level and early aging, and new
// connections succeed once the flood stops.
func TestIntegrationUnassuredFlood(t *testing.T) {
	const (
		capacity = 1024
		udpFlows = 60
		tcpFlows = 10
		flood    = 2 * capacity
	)
	e := newLabEnv(t, sinkPort)
	l := e.l
	cfg := sinkConfig(l)
	cfg.Tables.Sessions = capacity
	cfg.Userspace.SessionShards = 4
	b := newBackend(t, e, nil, cfg)
	ctx := context.Background()

	udpRound := func() {
		t.Helper()
		for i := range udpFlows {
			if err := udpRT(l, uint16(45000+i), l.ServerAddr4, portUDP, 2*time.Second); err != nil {
				t.Errorf("established udp flow %d: %v", i, err)
			}
		}
	}
	udpRound()
	var conns []net.Conn
	for range tcpFlows {
		if err := l.Client.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(l.ServerAddr4, portTCP).String(), 3*time.Second)
			if err == nil {
				conns = append(conns, c)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	tcpRound := func() {
		t.Helper()
		for i, c := range conns {
			msg := []byte(fmt.Sprintf("round %d", i))
			c.SetDeadline(time.Now().Add(2 * time.Second))
			got := make([]byte, len(msg))
			if _, err := c.Write(msg); err != nil {
				t.Errorf("tcp flow %d: %v", i, err)
				continue
			}
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Errorf("tcp flow %d: %v", i, err)
			}
		}
	}
	tcpRound()
	rep := report(t, b)
	if rep.Sessions.Unassured != 0 {
		t.Errorf("before the flood: %d unassured sessions", rep.Sessions.Unassured)
	}
	dropped0 := counter(t, b, "dropped_policy")
	early0, full0 := counter(t, b, dataplane.CounterSessionEarlyDrop), counter(t, b, dataplane.CounterSessionTableFull)

	raw := newRawSender(t, l.Client, l.ClientIf)
	sawAging, maxUnassured := false, uint64(0)
	for i := range flood {
		raw.send(t, packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC, PayloadLen: 18,
			Src: netip.AddrPortFrom(l.ClientAddr4, uint16(10000+i)), Dst: netip.AddrPortFrom(l.ServerAddr4, sinkPort)}))
		if i%512 == 511 {
			rep := report(t, b)
			sawAging = sawAging || rep.Sessions.EarlyAging
			if r, ok := rep.Find(dataplane.ResourceSessionsUnassured, "global"); ok && r.Used != nil && r.Capacity == capacity {
				maxUnassured = max(maxUnassured, *r.Used)
			}
			udpRound()
			tcpRound()
		}
	}
	// Every flood frame was judged: created (then maybe early-dropped) or
	// refused. The established flows are assured: never evicted.
	created := waitCounter(t, b, "sessions_created_ipv4", 0)
	early := counter(t, b, dataplane.CounterSessionEarlyDrop) - early0
	full := counter(t, b, dataplane.CounterSessionTableFull) - full0
	if early+full < flood-capacity {
		t.Errorf("early drops %d + table full %d < %d flows beyond the table", early, full, flood-capacity)
	}
	if d := counter(t, b, "dropped_policy") - dropped0; d != 0 {
		t.Errorf("%d packets met the policy during the flood: an established flow lost its session", d)
	}
	for i := range udpFlows {
		if s, ok := sessionOf(t, b, "udp", netip.AddrPortFrom(l.ClientAddr4, uint16(45000+i)).String()); !ok || !s.Assured {
			t.Errorf("established udp flow %d: session %+v (found %v)", i, s, ok)
		}
	}
	if !sawAging || maxUnassured < capacity/2 {
		t.Errorf("during the flood: early aging seen %v, unassured row peaked at %d", sawAging, maxUnassured)
	}
	t.Logf("flood of %d: sessions created %d, early drops %d, table full %d, unassured peak %d", flood, created, early, full, maxUnassured)

	// After the flood: new connections succeed (they take unassured slots).
	for i := range 20 {
		if err := tcpRT(l, l.ServerAddr4, 3*time.Second); err != nil {
			t.Errorf("new connection %d after the flood: %v", i, err)
		}
	}
	_ = ctx
}
