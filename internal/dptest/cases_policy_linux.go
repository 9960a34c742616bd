package dptest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
)

func init() {
	Register(
		Case{Name: "policy/reference table", Config: referenceConfig, Run: referenceTable},
		Case{Name: "policy/mapped addresses", Config: mappedConfig, Run: mappedAddresses},
		Case{Name: "policy/swap keeps sessions", Config: swapConfig, Run: swapKeepsSessions},
		Case{Name: "apply/refusals keep the running config", Run: refusalsKeepRunning},
		Case{Name: "sessions/counts", Run: sessionCounts},
	)
}

// referenceConfig exercises the policy semantics of dataplane.Config:
// first match (a deny before a broader allow), ports, protocol numbers,
// the family of a prefix list, default deny, no reverse policy.
func referenceConfig(e *Env) *dataplane.Config {
	l := e.Lab
	c := Base(l)
	c.Policies = []dataplane.Policy{
		// 0: deny UDP 9000-9999 from the client's IPv4 net: an IPv4-only
		// source list, so IPv6 packets fall through to 2.
		{Name: "deny-high-udp-v4", FromZone: "clients", ToZone: "servers", Sources: []string{l.ClientNet4.String()},
			Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: 9000, Last: 9999}}, Action: dataplane.ActionDeny},
		// 1: TCP 8080 to the server nets, both families.
		{FromZone: "clients", ToZone: "servers", Destinations: []string{l.ServerNet4.String(), l.ServerNet6.String()},
			Protocol: dataplane.ProtoTCP, DestinationPorts: []dataplane.PortRange{{First: PortTCP, Last: PortTCP}}, Action: dataplane.ActionAllow},
		// 2: UDP 5353 and 9999.
		{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP,
			DestinationPorts: []dataplane.PortRange{{First: PortUDP, Last: PortUDP}, {First: PortDenied, Last: PortDenied}}, Action: dataplane.ActionAllow},
		// 3: ICMP is protocol 1 only: not ICMPv6.
		{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoICMP, Action: dataplane.ActionAllow},
	}
	return c
}

func referenceTable(t testing.TB, e *Env) {
	l := e.Lab
	before := e.Counters(t, "dropped_policy", "forwarded")
	Expect(t,
		e.UDPFlow("udp4 5353 (rule 2)", l.ServerAddr4, PortUDP, Answered),
		e.UDPFlow("udp6 5353 (rule 2)", l.ServerAddr6, PortUDP, Answered),
		e.UDPFlow("udp4 9999 (deny rule 0 before allow rule 2)", l.ServerAddr4, PortDenied, Silent),
		e.UDPFlow("udp6 9999 (v4-only sources of rule 0 do not match: rule 2)", l.ServerAddr6, PortDenied, Answered),
		e.UDPFlow("udp4 8053 (no rule)", l.ServerAddr4, PortOther, Silent),
		e.TCPFlow("tcp4 8080 (rule 1)", l.ServerAddr4, PortTCP, Answered),
		e.TCPFlow("tcp6 8080 (rule 1)", l.ServerAddr6, PortTCP, Answered),
		e.TCPFlow("tcp4 9999 (rule 1 is for 8080 only)", l.ServerAddr4, PortDenied, Silent),
		e.PingFlow("icmp echo (rule 3)", l.ServerAddr4, Answered),
		e.PingFlow("icmpv6 echo (icmp is not icmpv6)", l.ServerAddr6, Silent),
		Flow{Name: "server to client (no reverse policy)", Want: Silent, Run: func() Probe {
			stop, err := netlab.UDPEcho(context.Background(), l.Lab.Client, netip.AddrPortFrom(l.ClientAddr4, PortUDP))
			if err != nil {
				return Probe{Outcome: Failed, Err: err}
			}
			defer stop()
			return UDP(l.Lab.Server, netip.AddrPortFrom(l.ClientAddr4, PortUDP), UDPOptions{SrcPort: e.Port(), Timeout: Silence})
		}},
	)
	d := e.DeltaAtLeast(t, before, map[string]uint64{"dropped_policy": 5, "forwarded": 2*4 + 2*10})
	// Five denied flows, each at least one packet (TCP retransmits more).
	if d["dropped_policy"] < 5 {
		t.Errorf("dropped_policy rose by %d, want >= 5 (one per denied flow)", d["dropped_policy"])
	}
	// Six answered flows, at least two packets each; the TCP exchanges
	// are handshake, 3000 bytes each way and the close.
	if d["forwarded"] < 2*4+2*10 {
		t.Errorf("forwarded rose by %d: the backend did not carry the traffic", d["forwarded"])
	}
}

// mappedConfig: an IPv4-mapped IPv6 prefix is an IPv6 prefix (the Config
// contract): it matches IPv6 packets whose address is mapped, never IPv4
// packets. The eBPF backend used to unmap it (issue 14).
func mappedConfig(e *Env) *dataplane.Config {
	l := e.Lab
	c := Base(l)
	mapped := netip.PrefixFrom(netip.AddrFrom16(l.ClientAddr4.As16()), 120).Masked()
	c.Policies = []dataplane.Policy{
		{FromZone: "clients", ToZone: "servers", Sources: []string{mapped.String()},
			Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: PortUDP, Last: PortUDP}}, Action: dataplane.ActionAllow},
		{FromZone: "clients", ToZone: "servers", Sources: []string{l.ClientAddr4.String()},
			Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: PortDenied, Last: PortDenied}}, Action: dataplane.ActionAllow},
	}
	return c
}

func mappedAddresses(t testing.TB, e *Env) {
	l := e.Lab
	Expect(t,
		e.UDPFlow("udp4 5353 from the client: a mapped prefix does not match IPv4", l.ServerAddr4, PortUDP, Silent),
		e.UDPFlow("udp4 9999 from the client: the IPv4 prefix does", l.ServerAddr4, PortDenied, Answered),
	)
	// IPv6 packets with an IPv4-mapped source no socket sends: injected on
	// the client link, counted where they leave the firewall.
	cap, err := Capture(l.Lab.Server, l.ServerIf)
	if err != nil {
		t.Fatal(err)
	}
	defer cap.Close()
	src := netip.AddrFrom16(l.ClientAddr4.As16())
	sport := e.Port()
	frame := func(dport uint16) []byte {
		f := packet.UDP(packet.Spec{SrcMAC: l.ClientMAC, DstMAC: l.FwClientMAC,
			Src: netip.AddrPortFrom(l.ClientAddr6, sport), Dst: netip.AddrPortFrom(l.ServerAddr6, dport), PayloadLen: 8})
		setIPv6Src(f, src)
		return f
	}
	const n = 3
	var frames [][]byte
	for range n {
		frames = append(frames, frame(PortUDP), frame(PortDenied))
	}
	if err := SendFrames(l.Lab.Client, l.ClientIf, frames...); err != nil {
		t.Fatal(err)
	}
	got := map[uint16]int{}
	cap.Count(Silence, func(info packet.Info) bool {
		if info.Src.Addr() == src && info.Src.Port() == sport {
			got[info.Dst.Port()]++
		}
		return false
	})
	if got[PortUDP] != n || got[PortDenied] != 0 {
		t.Errorf("IPv6 from %s forwarded: %d to %d (mapped prefix, want %d), %d to %d (IPv4 prefix, want 0)",
			src, got[PortUDP], PortUDP, n, got[PortDenied], PortDenied)
	}
}

// setIPv6Src rewrites the source address of an untagged IPv6 UDP frame
// and fixes the UDP checksum (RFC 1624: the sum changes by the difference
// of the words replaced).
func setIPv6Src(f []byte, a netip.Addr) {
	const src, csum = 14 + 8, 14 + 40 + 6
	sum := uint32(^binary.BigEndian.Uint16(f[csum:]))
	n := a.As16()
	for i := 0; i < 16; i += 2 {
		sum += uint32(^binary.BigEndian.Uint16(f[src+i:])) + uint32(binary.BigEndian.Uint16(n[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	copy(f[src:src+16], n[:])
	binary.BigEndian.PutUint16(f[csum:], ^uint16(sum))
}

// swapConfig keeps sessions across a policy change (keep_on_policy_change),
// the behaviour every backend had before the session model.
func swapConfig(e *Env) *dataplane.Config {
	l := e.Lab
	c := Base(l)
	c.Sessions.KeepOnPolicyChange = true
	return c
}

// swapKeepsSessions: while flows run, "allow udp" becomes "deny udp". New
// flows are denied from the Apply on; the running flow (created under the
// old policy, kept by keep_on_policy_change) keeps passing both ways.
func swapKeepsSessions(t testing.TB, e *Env) {
	l := e.Lab
	long := e.Port()
	dst := netip.AddrPortFrom(l.ServerAddr4, PortUDP)
	if p := UDP(l.Lab.Client, dst, UDPOptions{SrcPort: long}); p.Outcome != Answered {
		t.Fatalf("long flow before the swap: %s", p)
	}
	var (
		stop, swapped atomic.Bool
		wg            sync.WaitGroup
		mu            sync.Mutex
		longFails     int
		longAfter     int
		newAfter      []uint16
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			p := UDP(l.Lab.Client, dst, UDPOptions{SrcPort: long, Timeout: 2 * time.Second})
			mu.Lock()
			if p.Outcome != Answered {
				longFails++
			} else if swapped.Load() {
				longAfter++
			}
			mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			was := swapped.Load()
			port := e.Port()
			if p := UDP(l.Lab.Client, dst, UDPOptions{SrcPort: port, Timeout: 300 * time.Millisecond}); p.Outcome == Answered && was {
				mu.Lock()
				newAfter = append(newAfter, port)
				mu.Unlock()
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // traffic before the swap
	deny := e.Applied.Clone()
	deny.Policies[1].Action = dataplane.ActionDeny
	e.Apply(t, deny)
	swapped.Store(true)
	deadline := time.Now().Add(3 * time.Second)
	for {
		mu.Lock()
		enough := longAfter >= 5
		mu.Unlock()
		if enough || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a few more new flows after the swap
	stop.Store(true)
	wg.Wait()
	if longFails != 0 {
		t.Errorf("the established flow failed %d times", longFails)
	}
	if longAfter == 0 {
		t.Error("the established flow made no round trip after the swap")
	}
	if len(newAfter) != 0 {
		t.Errorf("new flows passed after the swap: source ports %v", newAfter)
	}
}

// refusalsKeepRunning: invalid, unresolvable and unsupported configs fail
// with every problem named, and the running generation keeps forwarding
// exactly as before; a good config then applies as the next generation.
func refusalsKeepRunning(t testing.TB, e *Env) {
	l := e.Lab
	ctx := context.Background()
	gen := e.Report(t).Generation

	bad := Base(l)
	bad.Interfaces[1].Name = ""
	bad.Policies[0].Action = "maybe"
	bad.Policies[1].Sources = []string{"not-an-address"}
	_, err := e.DP.Apply(ctx, bad)
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("invalid config: %v, want a *ConfigError", err)
	}
	fields := map[string]bool{}
	for _, p := range ce.Problems {
		fields[p.Field] = true
	}
	for _, f := range []string{"interfaces[1].name", "policies[0].action", "policies[1].sources[0]"} {
		if !fields[f] {
			t.Errorf("problem for %s not reported: %v", f, ce)
		}
	}

	missing := Base(l)
	missing.Interfaces[1].Name = "gone" + l.Suffix[:4]
	missing.Policies = nil // would deny everything, were it applied
	_, err = e.DP.Apply(ctx, missing)
	if !errors.As(err, &ce) || len(ce.Problems) != 1 || ce.Problems[0].Field != "interfaces[1].name" {
		t.Errorf("missing interface: %v, want one problem on interfaces[1].name", err)
	}

	unsup := Base(l)
	unsup.Forwarding.Routes = []dataplane.Route{{Destination: "198.51.100.0/24", Interface: l.FwServerIf}}
	unsup.Tables.Sessions = e.Applied.Tables.SessionsOrDefault() / 2 // a running table is not resized
	unsup.Policies = nil
	_, err = e.DP.Apply(ctx, unsup)
	if !errors.Is(err, dataplane.ErrNotSupported) || !strings.Contains(err.Error(), "forwarding.routes") || !strings.Contains(err.Error(), "tables.sessions") {
		t.Errorf("static routes and a new session table size: %v, want ErrNotSupported naming forwarding.routes and tables.sessions", err)
	}

	Expect(t,
		e.UDPFlow("udp4 allowed after the refusals", l.ServerAddr4, PortUDP, Answered),
		e.UDPFlow("udp6 allowed after the refusals", l.ServerAddr6, PortUDP, Answered),
		e.UDPFlow("udp4 denied after the refusals", l.ServerAddr4, PortDenied, Silent),
		e.TCPFlow("tcp4 allowed after the refusals", l.ServerAddr4, PortTCP, Answered),
	)
	if g := e.Report(t).Generation; g != gen {
		t.Errorf("generation %d after refused applies, want %d", g, gen)
	}
	res := e.Apply(t, Base(l))
	if res.Generation != gen+1 {
		t.Errorf("next good Apply: generation %d, want %d", res.Generation, gen+1)
	}
}

// sessionCounts: N flows make exactly N sessions, by family, in the report
// and in the session listing. Timeouts are long, so no session of this or
// an earlier case expires while it runs.
func sessionCounts(t testing.TB, e *Env) {
	l := e.Lab
	long := e.Applied.Clone()
	hour := dataplane.Duration(time.Hour)
	long.Timeouts = dataplane.Timeouts{TCP: hour, TCPOpening: hour, TCPClosing: hour, TCPClosed: hour, UDP: hour,
		UDPUnreplied: hour, ICMP: hour, ICMPUnreplied: hour, Other: hour, OtherUnreplied: hour}
	e.Apply(t, long)
	const flows = 40
	rep := e.Report(t)
	if rep.Sessions == nil {
		t.Fatal("report has no session counts")
	}
	before := *rep.Sessions
	listed := len(e.Sessions(t))
	var fl []Flow
	for i := range flows {
		dst := l.ServerAddr4
		if i%4 == 3 {
			dst = l.ServerAddr6
		}
		fl = append(fl, e.UDPFlow(fmt.Sprintf("flow %d", i), dst, PortUDP, Answered))
	}
	Expect(t, fl...)
	rep = e.Report(t)
	want := dataplane.SessionCounts{IPv4: before.IPv4 + flows*3/4, IPv6: before.IPv6 + flows/4, Total: before.Total + flows}
	if rep.Sessions == nil || rep.Sessions.IPv4 != want.IPv4 || rep.Sessions.IPv6 != want.IPv6 || rep.Sessions.Total != want.Total {
		t.Errorf("sessions %+v, want %+v (%d new flows)", rep.Sessions, want, flows)
	}
	if got := len(e.Sessions(t)); got != listed+flows {
		t.Errorf("Sessions lists %d, want %d", got, listed+flows)
	}
}
