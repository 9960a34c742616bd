package capability

import (
	"strings"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
)

// TestIntegrationAttachDecisionOnVeths probes real veths, with the lab's
// settings and with the kernel's defaults, reads their peers in the other
// namespaces, and checks what the gate decides for each attach setting.
func TestIntegrationAttachDecisionOnVeths(t *testing.T) {
	for _, tt := range []struct {
		name     string
		defaults bool
	}{{"lab settings", false}, {"kernel defaults", true}} {
		t.Run(tt.name, func(t *testing.T) {
			l := netlab.NewT(t, &netlab.Options{KernelVethDefaults: tt.defaults})
			ifs, err := ProbeInterfaces(l.Firewall.Path, []string{l.FwClientIf})
			if err != nil {
				t.Fatal(err)
			}
			ic := ifs[l.FwClientIf]
			if !ic.Exists || ic.Kind != "veth" || ic.Driver != "veth" || ic.MTU != 1500 {
				t.Fatalf("probe = %+v, want an existing veth (driver veth) with MTU 1500", ic)
			}
			if ic.Peer == nil {
				t.Fatalf("peer in %s not read: %s", l.Client, ic.PeerErr)
			}
			p := ic.Peer
			if p.Name != l.ClientIf || p.Ifindex != l.ClientIndex {
				t.Errorf("peer = %s (%d), want %s (%d)", p.Name, p.Ifindex, l.ClientIf, l.ClientIndex)
			}
			// The kernel makes veths with GRO off and TX checksum offload
			// and TSO on; the lab turns GRO on and checksum offload off.
			// (TSO needs TX checksum offload, so the lab has it off too.)
			if p.TXChecksum != tt.defaults || p.GRO == tt.defaults || p.TSO != tt.defaults {
				t.Errorf("peer offloads = tx-checksum %v, gro %v, tso %v; want %v, %v, %v", p.TXChecksum, p.GRO, p.TSO, tt.defaults, !tt.defaults, tt.defaults)
			}

			// Redirects into our end arrive only while the peer runs NAPI.
			if got := ChooseAttach("", ic, true).XDPTx; got == tt.defaults {
				t.Errorf("XDPTx = %v with peer GRO %v", got, p.GRO)
			}
			auto := ChooseAttach("", ic, true)
			if auto.Mode != dataplane.AttachTC || auto.Refused || !strings.Contains(auto.Reason, "veth") {
				t.Errorf("auto = %+v, want tc because veth", auto)
			}
			xdp := ChooseAttach(dataplane.AttachXDP, ic, true)
			if tt.defaults {
				if !xdp.Refused || !strings.Contains(xdp.Reason, "TX checksum offload on") {
					t.Errorf("forced xdp with the peer's checksum offload on = %+v, want refused naming it", xdp)
				}
			} else if xdp.Refused || xdp.Mode != dataplane.AttachXDP || !xdp.XDPTx {
				t.Errorf("forced xdp on lab veths = %+v, want xdp, taking redirects", xdp)
			}
			if tc := ChooseAttach(dataplane.AttachTC, ic, true); tc.Mode != dataplane.AttachTC || tc.Refused {
				t.Errorf("forced tc = %+v", tc)
			}
		})
	}
}
