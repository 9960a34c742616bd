package capability

import (
	"strings"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
)

// TestChooseAttach covers the decision table without a kernel.
func TestChooseAttach(t *testing.T) {
	// veth's end advertises ndo-xmit (the kernel's redirect check); vethNoXmit's
	// does not, as when the peer's GRO was turned on while it was down.
	veth := func(peer *PeerCaps, mtu int) InterfaceCaps {
		return InterfaceCaps{Name: "v0", Exists: true, Kind: "veth", Driver: "veth", MTU: mtu,
			Features: []string{"basic", "redirect", "ndo-xmit", "rx-sg", "ndo-xmit-sg"}, Peer: peer}
	}
	vethNoXmit := func(peer *PeerCaps, mtu int) InterfaceCaps {
		ic := veth(peer, mtu)
		ic.Features = []string{"basic", "redirect", "rx-sg"}
		return ic
	}
	labPeer := &PeerCaps{Name: "p0", MTU: 1500, GRO: true}
	xdpPeer := &PeerCaps{Name: "p0", MTU: 1500, XDP: true}
	defaultsPeer := &PeerCaps{Name: "p0", MTU: 1500, TXChecksum: true, TSO: true}
	// The kernel clears ndo-xmit when the peer's GRO goes off while up;
	// a flag left on without NAPI on the peer is not trusted either.
	staleFlag := veth(&PeerCaps{Name: "p0", MTU: 1500}, 1500)
	unknownFeatures := veth(labPeer, 1500)
	unknownFeatures.Features = nil
	nic := InterfaceCaps{Name: "eth0", Exists: true, Kind: "device", Driver: "mlx5_core", MTU: 1500,
		Features: []string{"basic", "redirect", "ndo-xmit", "xsk-zerocopy"}}
	nicNoXmit := nic
	nicNoXmit.Features = []string{"basic", "redirect"}
	bridge := InterfaceCaps{Name: "br0", Exists: true, Kind: "bridge", Driver: "bridge", MTU: 1500, Features: []string{}}
	unreadable := veth(nil, 1500)
	unreadable.PeerErr = "peer netns not found"

	tests := []struct {
		name    string
		want    dataplane.AttachMode
		ic      InterfaceCaps
		tcx     bool
		mode    dataplane.AttachMode
		refused bool
		xdpTx   bool
		reason  string
	}{
		{"auto veth, lab peer", "", veth(labPeer, 1500), true, dataplane.AttachTC, false, true, "veth"},
		{"auto veth, default peer", dataplane.AttachAuto, veth(defaultsPeer, 1500), true, dataplane.AttachTC, false, false, "checksum offload on"},
		{"auto veth, peer without NAPI", "", veth(defaultsPeer, 1500), true, dataplane.AttachTC, false, false, "runs no NAPI"},
		{"auto native NIC", "", nic, true, dataplane.AttachXDP, false, true, "native XDP (driver mlx5_core"},
		{"auto native NIC without ndo-xmit", "", nicNoXmit, true, dataplane.AttachXDP, false, false, "takes no XDP redirects"},
		{"auto bridge", "", bridge, true, dataplane.AttachTC, false, false, "no native XDP"},
		{"auto not probed", "", InterfaceCaps{Name: "x"}, true, dataplane.AttachTC, false, true, "not probed"},
		{"auto without tcx falls back to native XDP", "", veth(labPeer, 1500), false, dataplane.AttachXDP, false, true, "no tcx"},
		{"auto without tcx, no native XDP", "", bridge, false, "", true, false, "no tcx"},
		{"auto veth, peer GRO on but no ndo-xmit", "", vethNoXmit(labPeer, 1500), true, dataplane.AttachTC, false, false, "does not advertise ndo-xmit"},
		{"auto without tcx, veth without ndo-xmit", "", vethNoXmit(labPeer, 1500), false, dataplane.AttachXDP, false, false, "no tcx"},
		{"xdp on lab veth", dataplane.AttachXDP, veth(labPeer, 1500), true, dataplane.AttachXDP, false, true, "forced"},
		{"xdp on veth whose peer runs XDP", dataplane.AttachXDP, veth(xdpPeer, 1500), true, dataplane.AttachXDP, false, true, "forced"},
		{"xdp on veth, peer GRO on but no ndo-xmit", dataplane.AttachXDP, vethNoXmit(labPeer, 1500), true, "", true, false, "v0 takes no frames XDP redirects into it (it does not advertise ndo-xmit"},
		{"xdp on veth, peer GRO on but no ndo-xmit: the fix", dataplane.AttachXDP, vethNoXmit(labPeer, 1500), true, "", true, false, "p0 has GRO on, but turned on while p0 was down"},
		{"xdp on veth, ndo-xmit but peer without NAPI", dataplane.AttachXDP, staleFlag, true, "", true, false, "its peer p0 runs no NAPI"},
		{"xdp on veth, features unknown", dataplane.AttachXDP, unknownFeatures, true, dataplane.AttachXDP, false, true, "forced"},
		{"xdp on default veth", dataplane.AttachXDP, veth(defaultsPeer, 1500), true, "", true, false, "TX checksum offload on"},
		{"xdp on default veth names both reasons", dataplane.AttachXDP, vethNoXmit(defaultsPeer, 1500), true, "", true, false, "tx off`, or use attach tc); veth v0 takes no frames XDP redirects"},
		{"xdp on unreadable veth", dataplane.AttachXDP, unreadable, true, "", true, true, "peer netns not found"},
		{"xdp at MTU 9000", dataplane.AttachXDP, veth(&PeerCaps{Name: "p0", MTU: 9000, GRO: true}, 9000), true, "", true, true, "MTU 9000"},
		{"xdp on bridge", dataplane.AttachXDP, bridge, true, "", true, false, "no native XDP"},
		{"xdp on NIC", dataplane.AttachXDP, nic, true, dataplane.AttachXDP, false, true, "forced"},
		{"tc", dataplane.AttachTC, nic, true, dataplane.AttachTC, false, true, "forced"},
		{"tc without tcx", dataplane.AttachTC, nic, false, "", true, true, "no tcx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ChooseAttach(tt.want, tt.ic, tt.tcx)
			if c.Refused != tt.refused || (!tt.refused && c.Mode != tt.mode) || c.XDPTx != tt.xdpTx {
				t.Errorf("ChooseAttach = %+v; want mode %q refused %v xdpTx %v", c, tt.mode, tt.refused, tt.xdpTx)
			}
			if !strings.Contains(c.Reason, tt.reason) {
				t.Errorf("reason %q lacks %q", c.Reason, tt.reason)
			}
		})
	}
}

// TestDecideExplainsAttachModes: the gate's verdict for a backend that
// attaches per interface lists every interface's mode, and a refused one
// makes the backend unsupported, naming the field.
func TestDecideExplainsAttachModes(t *testing.T) {
	cfg := &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: "v0", Zone: "a"}, {Name: "eth0", Zone: "b", Attach: dataplane.AttachXDP}},
		Zones:      []dataplane.Zone{{Name: "a"}, {Name: "b"}},
	}
	h := fullHost()
	h.Interfaces = map[string]InterfaceCaps{
		"v0":   {Name: "v0", Exists: true, Kind: "veth", MTU: 1500, Features: []string{"basic", "redirect"}, Peer: &PeerCaps{Name: "p", TXChecksum: true}},
		"eth0": {Name: "eth0", Exists: true, Kind: "device", Driver: "ixgbe", MTU: 1500, Features: []string{"basic", "redirect", "ndo-xmit"}},
	}
	b := Backend{Mode: dataplane.ModeEBPF, Features: []dataplane.Feature{dataplane.FeatureIPv4Forwarding, dataplane.FeatureIPv6Forwarding}, AttachModes: true}
	d, err := Decide(cfg, h, []Backend{b}, Request{Preference: PreferEBPF, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	ex := d.Explain()
	for _, want := range []string{"attach v0: tc (veth", "attach eth0: xdp (forced by config)"} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain lacks %q:\n%s", want, ex)
		}
	}
	cfg.Interfaces[0].Attach = dataplane.AttachXDP
	d, err = Decide(cfg, h, []Backend{b}, Request{Preference: PreferEBPF, Strict: true})
	if err == nil || !strings.Contains(err.Error(), "interfaces[0].attach: v0: attach xdp refused") {
		t.Errorf("forced XDP on a veth with partial checksums: %v\n%s", err, d.Explain())
	}
}
