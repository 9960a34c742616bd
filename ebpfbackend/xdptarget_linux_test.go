package ebpfbackend

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// TestIntegrationForcedXDPNeedsRedirectTargets: on lab veths whose peers
// run no XDP program, the kernel refuses every redirect into the firewall's
// ends (the lab turns the peers' GRO on before the links are up, so the
// ends never advertise ndo-xmit, which __xdp_enqueue requires), and frames
// the program counted as forwarded were dropped. Forced XDP is refused
// there, naming each interface; once the peers' GRO goes on while they are
// up (no XDP program on them), it is taken and socket traffic really
// arrives at the server's stack by XDP redirect, not through the kernel.
func TestIntegrationForcedXDPNeedsRedirectTargets(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, nil)
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatalf("resolve neighbours: %v", err)
	}
	stop, err := netlab.UDPEcho(ctx, l.Server, netip.AddrPortFrom(l.ServerAddr4, portUDP))
	if err != nil {
		t.Fatalf("udp echo: %v", err)
	}
	t.Cleanup(stop)
	b, err := New(ctx, &Options{NetNS: l.Firewall.Path})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })

	_, err = b.Apply(ctx, netlabConfig(l))
	if !errors.Is(err, dataplane.ErrNotSupported) {
		t.Fatalf("Apply with forced xdp and no redirect target: %v, want ErrNotSupported", err)
	}
	for i, name := range []string{l.FwClientIf, l.FwServerIf} {
		want := "veth " + name + " takes no frames XDP redirects into it"
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), fmt.Sprintf("interfaces[%d].attach: %s", i, name)) {
			t.Errorf("refusal lacks interfaces[%d] and %q:\n%v", i, want, err)
		}
	}
	attached := func() []dataplane.InterfaceStatus {
		rep, err := b.ResourceStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return rep.Interfaces
	}
	if a := attached(); len(a) != 0 {
		t.Errorf("refused Apply left attachments: %+v", a)
	}

	if err := l.ArmRedirectTargets(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Apply(ctx, netlabConfig(l)); err != nil {
		t.Fatalf("Apply after the peers' GRO went on while up: %v", err)
	}
	if a := attached(); len(a) != 2 || a[0].Attach != dataplane.AttachedXDP || a[1].Attach != dataplane.AttachedXDP {
		t.Fatalf("attachments %+v, want native xdp on both", a)
	}

	const n = 20
	snmp := func() map[string]uint64 {
		var m map[string]uint64
		if err := l.Server.Do(func() (err error) { m, err = netlab.ReadSNMP(); return err }); err != nil {
			t.Fatal(err)
		}
		return m
	}
	before := snmp()
	fwd, passed := counter(t, b, "forwarded"), counter(t, b, "passed_egress_not_xdp")
	for i := range n {
		if err := udpRT(l, uint16(21000+i), l.ServerAddr4, portUDP, 5*time.Second); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
	after := snmp()
	if d := after["UdpInDatagrams"] - before["UdpInDatagrams"]; d < n {
		t.Errorf("server stack received %d datagrams (UdpInDatagrams), want >= %d", d, n)
	}
	// Both directions by redirect: requests into the server's end, echoes
	// into the client's, none handed to the kernel for want of a target.
	if d := counter(t, b, "forwarded") - fwd; d < 2*n {
		t.Errorf("forwarded %d, want >= %d", d, 2*n)
	}
	if d := counter(t, b, "passed_egress_not_xdp") - passed; d != 0 {
		t.Errorf("passed_egress_not_xdp %d, want 0", d)
	}
}
