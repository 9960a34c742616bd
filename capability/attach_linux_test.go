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

			// Neither takes XDP redirects: the kernel's end has no NAPI
			// on the peer, and the lab turns the peer's GRO on before
			// the link is up, which leaves our end without ndo-xmit.
			if ic.Has("ndo-xmit") {
				t.Errorf("our end advertises ndo-xmit (%v) though its peer's GRO was set while down", ic.Features)
			}
			auto := ChooseAttach("", ic, true)
			if auto.XDPTx {
				t.Errorf("XDPTx = true without ndo-xmit (peer GRO %v)", p.GRO)
			}
			if auto.Mode != dataplane.AttachTC || auto.Refused || !strings.Contains(auto.Reason, "veth") {
				t.Errorf("auto = %+v, want tc because veth", auto)
			}
			xdp := ChooseAttach(dataplane.AttachXDP, ic, true)
			if !xdp.Refused || !strings.Contains(xdp.Reason, "takes no frames XDP redirects") {
				t.Errorf("forced xdp on a veth without ndo-xmit = %+v, want refused naming it", xdp)
			}
			if tt.defaults && !strings.Contains(xdp.Reason, "TX checksum offload on") {
				t.Errorf("forced xdp with the peer's checksum offload on = %+v, want refused naming it", xdp)
			}
			if tc := ChooseAttach(dataplane.AttachTC, ic, true); tc.Mode != dataplane.AttachTC || tc.Refused {
				t.Errorf("forced tc = %+v", tc)
			}
			if tt.defaults {
				return
			}

			// GRO turned on again while the peer is up: the kernel sets
			// ndo-xmit on our end and forced XDP is taken.
			if err := l.ArmRedirectTargets(); err != nil {
				t.Fatal(err)
			}
			ifs, err = ProbeInterfaces(l.Firewall.Path, []string{l.FwClientIf})
			if err != nil {
				t.Fatal(err)
			}
			ic = ifs[l.FwClientIf]
			if !ic.Has("ndo-xmit") {
				t.Errorf("no ndo-xmit (%v) after the peer's GRO went on while up", ic.Features)
			}
			if xdp := ChooseAttach(dataplane.AttachXDP, ic, true); xdp.Refused || xdp.Mode != dataplane.AttachXDP || !xdp.XDPTx {
				t.Errorf("forced xdp after regro = %+v, want xdp, taking redirects", xdp)
			}
		})
	}
}
