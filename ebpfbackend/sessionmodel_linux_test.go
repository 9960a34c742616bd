package ebpfbackend

import (
	"context"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/packet"
)

// The session model (dataplane/session.go) driven with crafted frames
// through the kernel's test-run. The shared conformance suite
// (internal/dptest, "sessions/*") checks the model with real traffic on
// both backends; on veths the eBPF backend attaches its TC program, so
// what stays here is what the suite cannot see: the XDP program's copy of
// the state machine (TCP states, pickup, UDP and zones, through xdpOnly),
// exact early-drop arithmetic with the sweep switched off (both programs)
// and early drop across CPUs.

type smLab struct {
	l    *fibLab
	b    *Backend
	prog *ebpf.Program
	tc   bool
}

func newSMLab(t *testing.T, tc bool, mod func(*dataplane.Config), opts Options) *smLab {
	t.Helper()
	l := newFIBLab(t)
	cfg := labConfig(l)
	if tc {
		for i := range cfg.Interfaces {
			cfg.Interfaces[i].Attach = dataplane.AttachTC
		}
	}
	if mod != nil {
		mod(cfg)
	}
	b := newLabBackendOpts(t, l, cfg, opts)
	prog := b.objs.XdpFw
	if tc {
		prog = b.objs.TcFw
	}
	return &smLab{l: l, b: b, prog: prog, tc: tc}
}

// tcp sends a TCP frame with flags from client (fromClient) or server on
// the 4-tuple client4:cport <-> server4:sport and returns the verdict.
func (s *smLab) tcp(t *testing.T, fromClient bool, cport, sport uint16, flags uint8) uint32 {
	t.Helper()
	l := s.l
	spec := packet.Spec{TCPFlags: flags, TCPSeq: 1}
	idx := l.inIdx
	if fromClient {
		spec.SrcMAC, spec.DstMAC = l.clientMAC, l.inMAC
		spec.Src, spec.Dst = netip.AddrPortFrom(l.client4, cport), netip.AddrPortFrom(l.server4, sport)
	} else {
		spec.SrcMAC, spec.DstMAC = l.serverMAC, l.outMAC
		spec.Src, spec.Dst = netip.AddrPortFrom(l.server4, sport), netip.AddrPortFrom(l.client4, cport)
		idx = l.outIdx
	}
	got, _ := l.runAny(t, s.prog, s.tc, idx, packet.TCP(spec))
	return got
}

func (s *smLab) udp(t *testing.T, fromClient bool, cport, sport uint16) uint32 {
	t.Helper()
	l := s.l
	idx := l.inIdx
	spec := l.spec4(l.client4, l.server4, cport, sport)
	if !fromClient {
		spec = packet.Spec{SrcMAC: l.serverMAC, DstMAC: l.outMAC, Src: netip.AddrPortFrom(l.server4, sport), Dst: netip.AddrPortFrom(l.client4, cport), PayloadLen: 18}
		idx = l.outIdx
	}
	got, _ := l.runAny(t, s.prog, s.tc, idx, packet.UDP(spec))
	return got
}

// session finds the session of client port cport, or fails.
func (s *smLab) session(t *testing.T, proto string, cport uint16) (dataplane.Session, bool) {
	t.Helper()
	list, _, err := s.b.Sessions(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	want := netip.AddrPortFrom(s.l.client4, cport).String()
	for _, se := range list {
		if se.Protocol == proto && se.Source == want {
			return se, true
		}
	}
	return dataplane.Session{}, false
}

func (s *smLab) wantState(t *testing.T, step, proto string, cport uint16, st dataplane.SessionState, assured bool) {
	t.Helper()
	se, ok := s.session(t, proto, cport)
	if !ok {
		t.Fatalf("%s: no %s session for client port %d", step, proto, cport)
	}
	if se.State != st || se.Assured != assured {
		t.Fatalf("%s: session %s assured %v, want %s assured %v", step, se.State, se.Assured, st, assured)
	}
	if se.FromZone != "inside" || se.ToZone != "outside" {
		t.Errorf("%s: zones %q -> %q, want inside -> outside", step, se.FromZone, se.ToZone)
	}
}

func forBothPrograms(t *testing.T, fn func(t *testing.T, tc bool)) {
	t.Run("xdp", func(t *testing.T) { fn(t, false) })
	t.Run("tc", func(t *testing.T) { fn(t, true) })
}

// xdpOnly runs fn on the XDP program: the conformance suite runs the TC
// program with real traffic.
func xdpOnly(t *testing.T, fn func(t *testing.T, tc bool)) {
	t.Run("xdp", func(t *testing.T) { fn(t, false) })
}

// TestSessionModelTCP: only a SYN opens a TCP session; the handshake makes
// it established and assured; FIN from each side closes it; RST closes at
// once; a SYN on a closed session starts a new one; closed sessions leave
// after their short timeout.
func TestSessionModelTCP(t *testing.T) {
	xdpOnly(t, func(t *testing.T, tc bool) {
		s := newSMLab(t, tc, func(c *dataplane.Config) {
			c.Timeouts.TCPClosed = dataplane.Duration(time.Second)
		}, Options{SessionSweepInterval: 100 * time.Millisecond})
		const port = 80

		before := counterOf(t, s.b, dataplane.CounterDropTCPNotSYN)
		for _, fl := range []uint8{packet.TCPAck, packet.TCPSyn | packet.TCPAck, packet.TCPRst, packet.TCPFin | packet.TCPAck, packet.TCPPsh | packet.TCPAck} {
			if got := s.tcp(t, true, 40100, port, fl); got != xdpDrop {
				t.Errorf("TCP flags %#x without a session: %s, want DROP", fl, actionNames[got])
			}
		}
		if d := counterOf(t, s.b, dataplane.CounterDropTCPNotSYN) - before; d != 5 {
			t.Errorf("%s +%d, want +5", dataplane.CounterDropTCPNotSYN, d)
		}
		if _, ok := s.session(t, "tcp", 40100); ok {
			t.Fatal("a non-SYN packet created a session")
		}

		// The handshake.
		steps := []struct {
			name       string
			fromClient bool
			flags      uint8
			state      dataplane.SessionState
			assured    bool
		}{
			{"syn", true, packet.TCPSyn, dataplane.StateOpening, false},
			{"syn-ack", false, packet.TCPSyn | packet.TCPAck, dataplane.StateOpening, false},
			{"ack", true, packet.TCPAck, dataplane.StateEstablished, true},
			{"data", false, packet.TCPPsh | packet.TCPAck, dataplane.StateEstablished, true},
			{"fin from client", true, packet.TCPFin | packet.TCPAck, dataplane.StateClosing, true},
			{"fin from server", false, packet.TCPFin | packet.TCPAck, dataplane.StateClosed, true},
			{"last ack", true, packet.TCPAck, dataplane.StateClosed, true},
		}
		for _, st := range steps {
			if got := s.tcp(t, st.fromClient, 40101, port, st.flags); got != xdpRedirect {
				t.Fatalf("%s: %s, want REDIRECT", st.name, actionNames[got])
			}
			s.wantState(t, st.name, "tcp", 40101, st.state, st.assured)
		}

		// RST closes an established session at once.
		for _, fl := range []uint8{packet.TCPSyn, packet.TCPSyn | packet.TCPAck, packet.TCPAck} {
			s.tcp(t, fl != packet.TCPSyn|packet.TCPAck, 40102, port, fl)
		}
		s.wantState(t, "handshake", "tcp", 40102, dataplane.StateEstablished, true)
		if got := s.tcp(t, false, 40102, port, packet.TCPRst); got != xdpRedirect {
			t.Fatalf("rst: %s, want REDIRECT (the RST reaches the other side)", actionNames[got])
		}
		s.wantState(t, "rst", "tcp", 40102, dataplane.StateClosed, true)

		// A SYN on the closed session is a new connection: the old session
		// ends and the policy judges the SYN again.
		reopened := counterOf(t, s.b, "sessions_reopened")
		if got := s.tcp(t, true, 40102, port, packet.TCPSyn); got != xdpRedirect {
			t.Fatalf("syn on a closed session: %s", actionNames[got])
		}
		s.wantState(t, "syn again", "tcp", 40102, dataplane.StateOpening, false)
		if d := counterOf(t, s.b, "sessions_reopened") - reopened; d != 1 {
			t.Errorf("sessions_reopened +%d, want +1", d)
		}

		// Closed sessions leave after tcp_closed (1 s), the rest stay.
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, closed := s.session(t, "tcp", 40101)
			_, open := s.session(t, "tcp", 40102)
			if !open {
				t.Fatal("the opening session left with the closed ones (tcp_opening is 30 s)")
			}
			if !closed {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the closed session did not leave within its 1 s timeout")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// TestSessionModelPickup: with sessions.tcp_pickup a mid-stream packet
// opens an established, unassured session (an RST never does); the reply
// makes it assured.
func TestSessionModelPickup(t *testing.T) {
	xdpOnly(t, func(t *testing.T, tc bool) {
		s := newSMLab(t, tc, func(c *dataplane.Config) { c.Sessions.TCPPickup = true }, Options{})
		if got := s.tcp(t, true, 40200, 80, packet.TCPRst); got != xdpDrop {
			t.Errorf("rst with pickup: %s, want DROP", actionNames[got])
		}
		if got := s.tcp(t, true, 40200, 443, packet.TCPAck|packet.TCPPsh); got != xdpRedirect {
			t.Fatalf("mid-stream packet with pickup: %s, want REDIRECT", actionNames[got])
		}
		s.wantState(t, "picked up", "tcp", 40200, dataplane.StateEstablished, false)
		if got := s.tcp(t, false, 40200, 443, packet.TCPAck); got != xdpRedirect {
			t.Fatalf("reply: %s", actionNames[got])
		}
		s.wantState(t, "replied", "tcp", 40200, dataplane.StateEstablished, true)
	})
}

// TestSessionModelUDPAndZones: UDP is unreplied until a reply; a packet of
// the session arriving from an interface of another zone is dropped and
// counted, and changes nothing.
func TestSessionModelUDPAndZones(t *testing.T) {
	xdpOnly(t, func(t *testing.T, tc bool) {
		s := newSMLab(t, tc, nil, Options{})
		if got := s.udp(t, true, 40300, 53); got != xdpRedirect {
			t.Fatalf("udp: %s", actionNames[got])
		}
		s.wantState(t, "request", "udp", 40300, dataplane.StateUnreplied, false)

		// The initiator's direction arriving on the outside interface:
		// spoofed, another zone.
		before := counterOf(t, s.b, dataplane.CounterDropZoneMismatch)
		l := s.l
		spoof := packet.UDP(packet.Spec{SrcMAC: l.serverMAC, DstMAC: l.outMAC,
			Src: netip.AddrPortFrom(l.client4, 40300), Dst: netip.AddrPortFrom(l.server4, 53), PayloadLen: 18})
		for range 2 { // the second time too: no cache entry lets it through
			if got, _ := l.runAny(t, s.prog, s.tc, l.outIdx, spoof); got != xdpDrop {
				t.Errorf("session tuple from the other zone: %s, want DROP", actionNames[got])
			}
		}
		if d := counterOf(t, s.b, dataplane.CounterDropZoneMismatch) - before; d != 2 {
			t.Errorf("%s +%d, want +2", dataplane.CounterDropZoneMismatch, d)
		}
		s.wantState(t, "after the spoof", "udp", 40300, dataplane.StateUnreplied, false)

		if got := s.udp(t, false, 40300, 53); got != xdpRedirect {
			t.Fatalf("reply: %s", actionNames[got])
		}
		s.wantState(t, "reply", "udp", 40300, dataplane.StateReplied, true)
		// Steady traffic both ways, cache included, stays on the session.
		for range 3 {
			if s.udp(t, true, 40300, 53) != xdpRedirect || s.udp(t, false, 40300, 53) != xdpRedirect {
				t.Fatal("established udp flow dropped")
			}
		}
	})
}

// TestSessionModelFullTable: a full table takes new flows by evicting
// unassured sessions (counted as early drops), never an assured one; with
// only assured sessions left a new flow is refused (counted).
func TestSessionModelFullTable(t *testing.T) {
	forBothPrograms(t, func(t *testing.T, tc bool) {
		const size = 64
		s := newSMLab(t, tc, func(c *dataplane.Config) { c.Tables.Sessions = size }, Options{SessionSweepInterval: -1})
		// 16 assured flows.
		for p := uint16(1000); p < 1016; p++ {
			if s.udp(t, true, p, 53) != xdpRedirect || s.udp(t, false, p, 53) != xdpRedirect {
				t.Fatalf("assured flow %d", p)
			}
		}
		// A flood of 4x the table in unanswered flows. Each new flow takes
		// the slot of an unassured one; a flow whose bounded probe finds
		// only assured candidates (the 16 assured flows are the oldest keys
		// of the ring: two probes' worth) is refused and counted.
		fullBefore := counterOf(t, s.b, dataplane.CounterSessionTableFull)
		var passed, dropped int
		for p := uint16(20000); p < 20000+4*size; p++ {
			switch s.udp(t, true, p, 53) {
			case xdpRedirect:
				passed++
			default:
				dropped++
			}
		}
		ed := counterOf(t, s.b, dataplane.CounterSessionEarlyDrop)
		refused := counterOf(t, s.b, dataplane.CounterSessionTableFull) - fullBefore
		if passed < 3*size || uint64(dropped) != refused || ed != uint64(passed-(size-16)) {
			t.Errorf("flood: %d passed, %d dropped (%d counted full), %d early drops; want >= %d passed, every drop counted, an early drop per flow past the free slots", passed, dropped, refused, ed, 3*size)
		}
		for p := uint16(1000); p < 1016; p++ {
			se, ok := s.session(t, "udp", p)
			if !ok || !se.Assured {
				t.Fatalf("assured flow %d lost its session under the flood (%+v)", p, se)
			}
			if s.udp(t, false, p, 53) != xdpRedirect {
				t.Fatalf("assured flow %d dropped under the flood", p)
			}
		}

		// Make every session assured: the next new flow finds no room.
		list, _, err := s.b.Sessions(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, se := range list {
			ap := netip.MustParseAddrPort(se.Source)
			if !se.Assured {
				s.udp(t, false, ap.Port(), 53)
			}
		}
		full := counterOf(t, s.b, dataplane.CounterSessionTableFull)
		if got := s.udp(t, true, 30000, 53); got != xdpDrop {
			t.Errorf("new flow into a table of assured sessions: %s, want DROP", actionNames[got])
		}
		if d := counterOf(t, s.b, dataplane.CounterSessionTableFull) - full; d != 1 {
			t.Errorf("%s +%d, want +1", dataplane.CounterSessionTableFull, d)
		}
		if c := sessionCounts(t, s.b); c.IPv4 != size {
			t.Errorf("sessions %d, want the full %d", c.IPv4, size)
		}
	})
}

// TestSessionModelEarlyDropAcrossCPUs: a flood created on one CPU is
// evicted by a new flow arriving on another (the candidate ring is shared).
func TestSessionModelEarlyDropAcrossCPUs(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two CPUs: one for the flood, one for the new flow")
	}
	const size = 64
	s := newSMLab(t, false, func(c *dataplane.Config) { c.Tables.Sessions = size }, Options{SessionSweepInterval: -1})
	onCPU := func(cpu int, fn func()) {
		t.Helper()
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				errc <- err
				return
			}
			fn()
			errc <- nil
		}()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	onCPU(0, func() {
		for p := uint16(20000); p < 20000+size; p++ {
			s.l.runOn = true
			if s.udp(t, true, p, 53) != xdpRedirect {
				t.Errorf("flood flow %d", p)
			}
		}
	})
	onCPU(1, func() {
		if got := s.udp(t, true, 30000, 53); got != xdpRedirect {
			t.Errorf("new flow on another CPU: %s, want REDIRECT by early drop", actionNames[got])
		}
	})
	s.l.runOn = false
	if v := counterOf(t, s.b, dataplane.CounterSessionEarlyDrop); v != 1 {
		t.Errorf("%s = %d, want 1", dataplane.CounterSessionEarlyDrop, v)
	}
}
