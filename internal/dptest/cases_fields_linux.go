package dptest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/packet"
)

func init() {
	Register(Case{Name: "config/fields", Fresh: true, Config: sized, Run: configFields})
}

// fieldCheck observes one field on the running dataplane, honoured or
// refused: start is the config each check changes one field of (the
// running one is start again after each check).
type fieldCheck struct {
	honoured, refused func(t testing.TB, e *Env, start *dataplane.Config)
}

// quick is how long a probe waits for a flow the mutation should stop:
// these probes run one after another, and a forwarded datagram comes back
// in well under a millisecond here.
const quick = 400 * time.Millisecond

// denies returns a check that applies mutate(Base) and expects UDP to
// PortUDP (allowed by Base) to stop passing.
func denies(mutate func(l *Lab, c *dataplane.Config)) fieldCheck {
	return fieldCheck{honoured: func(t testing.TB, e *Env, start *dataplane.Config) {
		c := start.Clone()
		mutate(e.Lab, c)
		e.Apply(t, c)
		if p := UDP(e.Lab.Lab.Client, netip.AddrPortFrom(e.Lab.ServerAddr4, PortUDP), UDPOptions{SrcPort: e.Port(), Timeout: quick}); p.Outcome != Silent {
			t.Errorf("udp4 %d after the change: %s, want silent", PortUDP, p)
		}
	}}
}

// refuses returns a check that applies mutate(Base) and expects a refusal
// that names field.
func refuses(field string, mutate func(l *Lab, c *dataplane.Config)) fieldCheck {
	return fieldCheck{refused: func(t testing.TB, e *Env, start *dataplane.Config) {
		c := start.Clone()
		mutate(e.Lab, c)
		_, err := e.DP.Apply(context.Background(), c)
		if !errors.Is(err, dataplane.ErrNotSupported) || !strings.Contains(err.Error(), field) {
			t.Errorf("Apply: %v, want ErrNotSupported naming %s", err, field)
		}
	}}
}

// fieldChecks are the checks of the shared dataplane; the table sizes are
// checked on a fresh one (sizeChecks).
var fieldChecks = map[string]fieldCheck{
	"interfaces[].name": denies(func(l *Lab, c *dataplane.Config) { c.Interfaces = c.Interfaces[:1] }), // egress unmanaged
	"interfaces[].zone": denies(func(l *Lab, c *dataplane.Config) { c.Interfaces[1].Zone = "clients" }),
	"interfaces[].attach": {
		// eBPF: each forced mode is the one reported, and traffic passes.
		honoured: func(t testing.TB, e *Env, start *dataplane.Config) {
			for _, mode := range []dataplane.AttachMode{dataplane.AttachTC, dataplane.AttachXDP} {
				c := start.Clone()
				for i := range c.Interfaces {
					c.Interfaces[i].Attach = mode
				}
				e.Apply(t, c)
				for _, st := range e.Report(t).Interfaces {
					if st.Attach != string(mode) {
						t.Errorf("attach %s: %s reported %q (%s)", mode, st.Name, st.Attach, st.Reason)
					}
				}
				if p := UDP(e.Lab.Lab.Client, netip.AddrPortFrom(e.Lab.ServerAddr4, PortUDP), UDPOptions{SrcPort: e.Port()}); p.Outcome != Answered {
					t.Errorf("attach %s: udp4: %s", mode, p)
				}
			}
		},
		// Userspace: AF_XDP needs its XDP shim; tc is refused.
		refused: refuses("tc", func(l *Lab, c *dataplane.Config) {
			c.Interfaces[1].Attach = dataplane.AttachTC
		}).refused,
	},
	"policies[].from_zone": denies(func(l *Lab, c *dataplane.Config) { c.Policies[1].FromZone = "servers" }),
	"policies[].to_zone":   denies(func(l *Lab, c *dataplane.Config) { c.Policies[1].ToZone = "clients" }),
	"policies[].sources": denies(func(l *Lab, c *dataplane.Config) {
		c.Policies[1].Sources = []string{"198.51.100.0/24", "2001:db8::/32"}
	}),
	"policies[].destinations": denies(func(l *Lab, c *dataplane.Config) {
		c.Policies[1].Destinations = []string{"198.51.100.0/24", "2001:db8::/32"}
	}),
	"policies[].protocol": denies(func(l *Lab, c *dataplane.Config) { c.Policies[1].Protocol = dataplane.ProtoTCP }),
	"policies[].destination_ports": denies(func(l *Lab, c *dataplane.Config) {
		c.Policies[1].DestinationPorts = []dataplane.PortRange{{First: PortUDP + 1, Last: PortUDP + 1}}
	}),
	"policies[].action": denies(func(l *Lab, c *dataplane.Config) { c.Policies[1].Action = dataplane.ActionDeny }),
	"forwarding.routes[].destination": refuses("forwarding.routes", func(l *Lab, c *dataplane.Config) {
		c.Forwarding.Routes = []dataplane.Route{{Destination: "198.51.100.0/24", Interface: l.FwServerIf}}
	}),
	"forwarding.routes[].interface": refuses("forwarding.routes", func(l *Lab, c *dataplane.Config) {
		c.Forwarding.Routes = []dataplane.Route{{Destination: "198.51.100.0/24", Interface: l.FwClientIf}}
	}),
	"forwarding.routes[].gateway": refuses("forwarding.routes", func(l *Lab, c *dataplane.Config) {
		c.Forwarding.Routes = []dataplane.Route{{Destination: "198.51.100.0/24", Interface: l.FwServerIf, Gateway: l.ServerAddr4.String()}}
	}),
	"tables.flow_cache": refuses("tables.flow_cache", func(l *Lab, c *dataplane.Config) { c.Tables.FlowCache = 8192 }),
	"tables.neighbors":  refuses("tables.neighbors", func(l *Lab, c *dataplane.Config) { c.Tables.Neighbors = 2048 }),
	"userspace.queues": {
		refused: refuses("queue", func(l *Lab, c *dataplane.Config) { c.Userspace.Queues = []int{0} }).refused,
		honoured: func(t testing.TB, e *Env, start *dataplane.Config) {
			// The lab's veths have one queue: queue 0 binds, queue 1 is
			// an error naming the field.
			c := start.Clone()
			c.Userspace.Queues = []int{1}
			_, err := e.DP.Apply(context.Background(), c)
			var ce *dataplane.ConfigError
			if !errors.As(err, &ce) || len(ce.Problems) == 0 || ce.Problems[0].Field != "userspace.queues[0]" {
				t.Errorf("queue 1 of a one-queue interface: %v, want a problem on userspace.queues[0]", err)
			}
			c.Userspace.Queues = []int{0}
			e.Apply(t, c)
			checkDetail(t, e.Report(t), "umem_frames", 8192, "/q0")
		},
	},
	"timeouts.udp":   expires("timeouts.udp"),
	"timeouts.tcp":   expires("timeouts.tcp"),
	"timeouts.icmp":  expires("timeouts.icmp"),
	"timeouts.other": expires("timeouts.other"),
}

// sized is the config of the case's own dataplane: every size differs
// from its default (a running dataplane cannot change them), except those
// the backend refuses.
func sized(e *Env) *dataplane.Config {
	c := Base(e.Lab)
	c.Tables.Sessions = 1024
	if fieldWant("tables.flow_cache", e.Mode) == Honoured {
		c.Tables.FlowCache = 8192
	}
	if fieldWant("tables.neighbors", e.Mode) == Honoured {
		c.Tables.Neighbors = 2048
	}
	c.Userspace = dataplane.UserspaceOpts{FramesPerBinding: 8192, RingSize: 1024, SessionShards: 8}
	return c
}

func fieldWant(path string, mode dataplane.Mode) Want {
	for _, f := range Fields {
		if f.Path == path {
			return f.WantOn(mode)
		}
	}
	panic("dptest: no field " + path)
}

// sizeChecks observe sized's fields in a report of the fresh dataplane.
var sizeChecks = map[string]func(t testing.TB, e *Env, rep dataplane.ResourceReport){
	"tables.sessions": func(t testing.TB, e *Env, rep dataplane.ResourceReport) {
		rows := map[dataplane.Mode][]string{dataplane.ModeEBPF: {"fw_sessions_v4", "fw_sessions_v6"}, dataplane.ModeUserspace: {"sessions"}}[e.Mode]
		if len(rows) == 0 {
			t.Fatalf("no session rows known for the %s backend", e.Mode)
		}
		for _, name := range rows {
			if r, ok := rep.Find(name, "global"); !ok || r.Capacity != 1024 {
				t.Errorf("%s: capacity %d (found %v), want 1024", name, r.Capacity, ok)
			}
		}
	},
	"tables.flow_cache": func(t testing.TB, e *Env, rep dataplane.ResourceReport) {
		checkDetail(t, rep, "flow_cache", 8192, "")
	},
	"tables.neighbors": func(t testing.TB, e *Env, rep dataplane.ResourceReport) {
		if r, ok := rep.Find("neighbors", "global"); !ok || r.Capacity != 2048 {
			t.Errorf("neighbors: capacity %d (found %v), want 2048", r.Capacity, ok)
		}
	},
	"userspace.frames_per_binding": func(t testing.TB, e *Env, rep dataplane.ResourceReport) {
		checkDetail(t, rep, "umem_frames", 8192, "")
	},
	"userspace.ring_size": func(t testing.TB, e *Env, rep dataplane.ResourceReport) {
		checkDetail(t, rep, "fill_ring_empty", 1024, "")
	},
	"userspace.session_shards": func(t testing.TB, e *Env, rep dataplane.ResourceReport) {
		n := 0
		for _, r := range rep.Resources {
			if r.Name == "sessions" && r.Detail {
				n++
			}
		}
		if n != 8 {
			t.Errorf("%d session shard rows, want 8", n)
		}
	},
}

// checkDetail: every detail row called name (one per binding) has the
// capacity and a scope ending in suffix, and there is one.
func checkDetail(t testing.TB, rep dataplane.ResourceReport, name string, capacity uint64, suffix string) {
	t.Helper()
	n := 0
	for _, r := range rep.Resources {
		if r.Name == name && r.Detail {
			if !strings.HasSuffix(r.Scope, suffix) {
				t.Errorf("%s %s: scope does not end in %q", name, r.Scope, suffix)
			}
			n++
			if r.Capacity != capacity {
				t.Errorf("%s %s: capacity %d, want %d", name, r.Scope, r.Capacity, capacity)
			}
		}
	}
	if n == 0 {
		t.Errorf("no %s detail rows", name)
	}
}

// configFields: each config field changes what the backend does, or is
// refused, or is in the table (Fields) as a label, ignored, tuning or
// pending, with the reason. It runs on a dataplane of its own whose sizes
// all differ from the defaults (sized).
func configFields(t testing.TB, e *Env) {
	start := e.Applied.Clone()
	// Traffic first: a worker makes its flow cache with its first frame.
	if p := UDP(e.Lab.Lab.Client, netip.AddrPortFrom(e.Lab.ServerAddr4, PortUDP), UDPOptions{SrcPort: e.Port()}); p.Outcome != Answered {
		t.Fatalf("udp4 before the checks: %s", p)
	}
	rep := e.Report(t)
	registered := map[string]bool{}
	for _, c := range Cases() {
		registered[c.Name] = true
	}
	for _, f := range Fields {
		w := f.WantOn(e.Mode)
		if w != Honoured && w != Refused {
			t.Logf("%s: %s on %s: %s", f.Path, w, e.Mode, f.Note)
			continue
		}
		if f.Case != "" {
			if w != Honoured || !registered[f.Case] {
				t.Errorf("%s: observed by case %q, which does not exist (or the field is not honoured)", f.Path, f.Case)
			}
			continue
		}
		if size, ok := sizeChecks[f.Path]; ok && w == Honoured {
			runSub(t, f.Path, func(t testing.TB) { size(t, e, rep) })
			continue
		}
		check := fieldChecks[f.Path]
		run := check.honoured
		if w == Refused {
			run = check.refused
		}
		if run == nil {
			t.Errorf("%s: %s on %s, but no check observes that", f.Path, w, e.Mode)
			continue
		}
		runSub(t, f.Path, func(t testing.TB) { run(t, e, start) })
		e.Apply(t, start)
	}
}

// runSub runs fn with failures prefixed by name.
func runSub(t testing.TB, name string, fn func(t testing.TB)) {
	p := &prefixed{TB: t, prefix: name + ": "}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(p)
	}()
	<-done
}

// prefixed prefixes failures with a field path; Fatal ends only the
// field's check.
type prefixed struct {
	testing.TB
	prefix string
}

func (p *prefixed) Helper()                        {}
func (p *prefixed) Errorf(format string, a ...any) { p.TB.Errorf(p.prefix+format, a...) }
func (p *prefixed) Error(a ...any)                 { p.TB.Error(p.prefix + fmt.Sprint(a...)) }
func (p *prefixed) Fatalf(format string, a ...any) { p.Errorf(format, a...); runtime.Goexit() }
func (p *prefixed) Fatal(a ...any)                 { p.Error(a...); runtime.Goexit() }
func (p *prefixed) FailNow()                       { p.TB.Fail(); runtime.Goexit() }

// expires returns the check of one idle timeout: with that timeout at 1 s
// (and every other at an hour), its protocol's sessions end within a few
// seconds while the other protocols' sessions stay.
func expires(field string) fieldCheck {
	proto := strings.TrimPrefix(field, "timeouts.")
	return fieldCheck{honoured: func(t testing.TB, e *Env, start *dataplane.Config) {
		l := e.Lab
		c := start.Clone()
		c.Policies = []dataplane.Policy{{FromZone: "clients", ToZone: "servers", Action: dataplane.ActionAllow}} // any protocol
		hour, sec := dataplane.Duration(time.Hour), dataplane.Duration(time.Second)
		c.Timeouts = dataplane.Timeouts{TCP: hour, UDP: hour, ICMP: hour, Other: hour}
		switch proto {
		case "tcp":
			c.Timeouts.TCP = sec
		case "udp":
			c.Timeouts.UDP = sec
		case "icmp":
			c.Timeouts.ICMP = sec
		case "other":
			c.Timeouts.Other = sec
		}
		e.Apply(t, c)
		// One replied (TCP: established) session of each protocol.
		if p := UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortUDP), UDPOptions{SrcPort: e.Port()}); p.Outcome != Answered {
			t.Fatalf("udp session: %s", p)
		}
		conn, err := holdTCP(l, netip.AddrPortFrom(l.ServerAddr4, PortTCP))
		if err != nil {
			t.Fatalf("tcp session: %v", err)
		}
		// Reset, not closed: its session may have expired by then, and a
		// FIN without a session is dropped and retransmitted for minutes
		// into later cases' counters; an RST is one packet.
		defer func() { conn.(*net.TCPConn).SetLinger(0); conn.Close() }()
		if p := Ping(l.Lab.Client, l.ServerAddr4, e.Port(), 2*time.Second); p.Outcome != Answered {
			t.Fatalf("icmp session: %s", p)
		}
		if err := otherFlow(l); err != nil {
			t.Fatalf("protocol 132 session: %v", err)
		}
		protos := func() map[string]bool {
			out := map[string]bool{}
			for _, s := range e.Sessions(t) {
				if strings.HasPrefix(s.Source, l.ClientAddr4.String()+":") || s.Source == l.ClientAddr4.String() {
					out[protoName(s.Protocol)] = true
				}
			}
			return out
		}
		if got := protos(); !got["tcp"] || !got["udp"] || !got["icmp"] || !got["other"] {
			t.Fatalf("sessions of the client before the timeout: %v, want tcp, udp, icmp and other", got)
		}
		deadline := time.Now().Add(6 * time.Second)
		for {
			got := protos()
			if !got[proto] {
				for _, p := range []string{"tcp", "udp", "icmp", "other"} {
					if p != proto && !got[p] {
						t.Errorf("the %s session ended with the %s one (timeout 1 h)", p, proto)
					}
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s session still there 6 s after a 1 s timeout", proto)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}}
}

// protoName maps a listed protocol to tcp, udp, icmp or other.
func protoName(p string) string {
	switch strings.ToLower(p) {
	case "tcp", "6":
		return "tcp"
	case "udp", "17":
		return "udp"
	case "icmp", "1", "icmpv6", "58":
		return "icmp"
	}
	return "other"
}

// holdTCP opens a TCP connection from the client, exchanges a few bytes
// (the handshake completes both ways) and keeps it open.
func holdTCP(l *Lab, dst netip.AddrPort) (net.Conn, error) {
	var conn net.Conn
	err := l.Lab.Client.Do(func() error {
		c, err := net.DialTimeout("tcp", dst.String(), 3*time.Second)
		conn = c
		return err
	})
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 4)
	if _, err := conn.Write([]byte("ping")); err != nil {
		conn.Close()
		return nil, err
	}
	if _, err := conn.Read(buf); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// otherFlow sends an IPv4 packet of protocol 132 from the client to the
// server and one back, as raw frames: a replied session of an "other"
// protocol.
func otherFlow(l *Lab) error {
	req := protoFrame(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
		Src: netip.AddrPortFrom(l.ClientAddr4, 0), Dst: netip.AddrPortFrom(l.ServerAddr4, 0), PayloadLen: 16}, 132)
	rep := protoFrame(packet.Spec{SrcMAC: l.ServerMAC, DstMAC: l.FwServerMAC,
		Src: netip.AddrPortFrom(l.ServerAddr4, 0), Dst: netip.AddrPortFrom(l.ClientAddr4, 0), PayloadLen: 16}, 132)
	if err := SendFrames(l.Lab.Client, l.ClientIf, req); err != nil {
		return err
	}
	time.Sleep(50 * time.Millisecond) // the request first, so the reply meets its session
	return SendFrames(l.Lab.Server, l.ServerIf, rep)
}

// protoFrame builds an untagged IPv4 frame of protocol proto: a UDP frame
// whose protocol byte is changed and header checksum recomputed.
func protoFrame(s packet.Spec, proto uint8) []byte {
	f := packet.UDP(s)
	ip := f[14 : 14+packet.IPv4Len]
	ip[9] = proto
	ip[10], ip[11] = 0, 0
	c := packet.Checksum(ip, 0)
	ip[10], ip[11] = byte(c>>8), byte(c)
	return f
}
