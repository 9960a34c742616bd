package userspacebackend

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
)

// Backend-specific NAT checks; the shared ones are the nat/* cases of
// internal/dptest (TestConformance).

func masqLabConfig(l *netlab.Lab) *dataplane.Config {
	c := netlabConfig(l)
	c.NAT = []dataplane.NATRule{{Name: "out", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers", Masquerade: true}}
	return c
}

// poolUsed reads the nat_pool row of scope.
func poolUsed(t testing.TB, b *Backend, scope string) uint64 {
	t.Helper()
	r, ok := report(t, b).Find(dataplane.ResourceNATPool, scope)
	if !ok || r.Used == nil {
		t.Fatalf("no %s row %q", dataplane.ResourceNATPool, scope)
	}
	return *r.Used
}

// TestIntegrationNATSlotRelease: a pool slot returns when its session is
// cleared and when a policy change ends it; the slots then serve new
// flows (a pool of 4 ports is reused twice over).
func TestIntegrationNATSlotRelease(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	cfg := netlabConfig(l)
	cfg.NAT = []dataplane.NATRule{{Name: "p4", Type: dataplane.NATSource, FromZone: "clients", ToZone: "servers",
		Pool: []string{"198.51.100.7"}, Ports: dataplane.PortRange{First: 41000, Last: 41003}}}
	b := newBackend(t, e, nil, cfg)
	ctx := context.Background()
	fill := func(base uint16) {
		t.Helper()
		for i := range uint16(4) {
			if err := udpRT(l, base+i, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
				t.Fatalf("flow %d: %v", i, err)
			}
		}
		if u := poolUsed(t, b, "p4"); u != 4 {
			t.Fatalf("pool used %d after 4 flows, want 4", u)
		}
		if err := udpRT(l, base+4, l.ServerAddr4, portUDP, 500*time.Millisecond); err == nil {
			t.Fatal("a fifth flow got through a pool of 4")
		}
	}
	fill(30000)
	n, err := b.ClearSessions(ctx, dataplane.SessionFilter{Address: "198.51.100.7"})
	if err != nil || n != 4 {
		t.Fatalf("ClearSessions by the pool address: %d, %v; want 4", n, err)
	}
	if u := poolUsed(t, b, "p4"); u != 0 {
		t.Errorf("pool used %d after clearing, want 0", u)
	}
	fill(30100)
	deny := cfg.Clone()
	deny.Policies = deny.Policies[:1] // UDP no longer allowed
	if _, err := b.Apply(ctx, deny); err != nil {
		t.Fatal(err)
	}
	if u := poolUsed(t, b, "p4"); u != 0 {
		t.Errorf("pool used %d after the policy ended the flows, want 0", u)
	}
	if _, err := b.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	fill(30200)
}

// TestIntegrationNATFirewallReachable: with its server-side address
// masqueraded, the firewall itself stays reachable on it (ping, a TCP
// service of its own) and its own connections out still work: the shim
// hands the dataplane only what no local socket owns.
func TestIntegrationNATFirewallReachable(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, masqLabConfig(l))
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatalf("masqueraded udp: %v", err)
	}
	var ln net.Listener
	if err := l.Firewall.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(l.FwServerAddr4, 2222).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("fw"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var got []byte
	err := l.Server.Do(func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(l.FwServerAddr4, 2222).String())
		if err != nil {
			return err
		}
		defer c.Close()
		got = make([]byte, 2)
		_, err = c.Read(got)
		return err
	})
	if err != nil || string(got) != "fw" {
		t.Errorf("the firewall's own TCP service on its masqueraded address: %q, %v", got, err)
	}
	// The firewall's own connection out, from the masqueraded address.
	if _, err := netlab.TCPRoundTrip(ctx, l.Firewall, netip.AddrPortFrom(l.FwServerAddr4, 0), netip.AddrPortFrom(l.ServerAddr4, portTCP), []byte("own")); err != nil {
		t.Errorf("the firewall's own TCP connection out: %v", err)
	}
	before, _ := report(t, b).Counter("shim_pass_local", "global")
	if err := l.Server.Do(func() error { return pingFrom(l.FwServerAddr4) }); err != nil {
		t.Errorf("ping the firewall's masqueraded address: %v", err)
	}
	if after, _ := report(t, b).Counter("shim_pass_local", "global"); after <= before {
		t.Errorf("shim_pass_local %d -> %d: the ping did not go to the kernel", before, after)
	}
	if v := counter(t, b, dataplane.CounterNATReverseMiss); v != 0 {
		t.Errorf("%s = %d: the firewall's own traffic reached the dataplane", dataplane.CounterNATReverseMiss, v)
	}
}

// pingFrom sends one echo request to dst from the calling namespace and waits
// for the reply (an unprivileged ICMP socket would need a sysctl; a raw
// one needs root, which the integration tests have).
func pingFrom(dst netip.Addr) error {
	c, err := net.DialTimeout("ip4:icmp", dst.String(), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	req := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1}
	cs := icmpChecksum(req)
	req[2], req[3] = byte(cs>>8), byte(cs)
	if _, err := c.Write(req); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		msg := buf[:n]
		if n >= 20 && msg[0]>>4 == 4 {
			msg = msg[int(msg[0]&0xf)*4:]
		}
		if len(msg) >= 8 && msg[0] == 0 && msg[4] == 0x12 && msg[5] == 0x34 {
			return nil
		}
	}
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// TestIntegrationMasqueradeFollowsAddress: when the egress interface's
// address changes, the sessions translated to the old one end (counted)
// and new flows leave with the new one.
func TestIntegrationMasqueradeFollowsAddress(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, nil, masqLabConfig(l))
	if err := udpRT(l, 31000, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	translatedTo := func(sport uint16) string {
		list, _, err := b.Sessions(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range list {
			if s.Source == netip.AddrPortFrom(l.ClientAddr4, sport).String() {
				a, _ := netip.ParseAddrPort(s.TranslatedSource)
				return a.Addr().String()
			}
		}
		return ""
	}
	if got := translatedTo(31000); got != l.FwServerAddr4.String() {
		t.Fatalf("translated to %q, want %s", got, l.FwServerAddr4)
	}
	// Renumber the firewall's server side within its subnet: the new
	// address is added, then the old primary removed, the new one
	// promoted (the interface never goes without an address, which would
	// flush its neighbours).
	fresh := l.ServerNet4.Addr().Next().Next().Next().Next() // .4
	err := l.Firewall.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+l.FwServerIf+"/promote_secondaries", []byte("1"), 0o644); err != nil {
			return err
		}
		lk, err := netlink.LinkByName(l.FwServerIf)
		if err != nil {
			return err
		}
		mask := net.CIDRMask(l.ServerNet4.Bits(), 32)
		if err := netlink.AddrAdd(lk, &netlink.Addr{IPNet: &net.IPNet{IP: fresh.AsSlice(), Mask: mask}}); err != nil {
			return fmt.Errorf("add %s: %w", fresh, err)
		}
		if err := netlink.AddrDel(lk, &netlink.Addr{IPNet: &net.IPNet{IP: l.FwServerAddr4.AsSlice(), Mask: mask}}); err != nil {
			return fmt.Errorf("remove %s: %w", l.FwServerAddr4, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the old address's session ends", 5*time.Second, func() bool {
		v, _ := report(t, b).Counter("nat_masquerade_sessions_ended", "global")
		return v == 1 && translatedTo(31000) == ""
	})
	if err := udpRT(l, 31001, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatalf("a new flow after the renumbering: %v", err)
	}
	if got := translatedTo(31001); got != fresh.String() {
		t.Errorf("new flow translated to %q, want the new address %s", got, fresh)
	}
}
