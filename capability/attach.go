package capability

import (
	"fmt"
	"strings"

	"github.com/fwplane/fwplane/dataplane"
)

// AttachChoice is how the eBPF backend hooks into one interface, and why.
type AttachChoice struct {
	Interface string `json:"interface"`
	// Want is the config's attach setting ("" or auto: the gate decides).
	Want dataplane.AttachMode `json:"want,omitempty"`
	// Mode is xdp or tc; empty when Refused is set.
	Mode dataplane.AttachMode `json:"mode,omitempty"`
	// Reason says why, in words an operator can act on.
	Reason string `json:"reason"`
	// XDPTx: the interface takes frames XDP redirects into it (it
	// advertises ndo-xmit, and a veth's peer runs NAPI; see xdpTx). When
	// false, an XDP ingress hands packets routed out of it to the kernel.
	XDPTx bool `json:"xdp_tx"`
	// Refused is set when the config forces a mode this interface cannot
	// run safely: the reason says why, and Apply fails closed.
	Refused bool `json:"refused,omitempty"`
}

func (c AttachChoice) String() string {
	if c.Refused {
		return fmt.Sprintf("%s: attach %s refused: %s", c.Interface, c.Want, c.Reason)
	}
	return fmt.Sprintf("%s: %s (%s)", c.Interface, c.Mode, c.Reason)
}

// vethXDPMaxMTU is the largest peer MTU at which veth takes a
// single-buffer XDP program (drivers/net/veth.c: one 4 KiB page less
// XDP headroom, 256, and struct skb_shared_info, 320 on x86-64, less the
// Ethernet header). The kernel refuses the attach above it (ERANGE); the
// backend also falls back to TC when the attach fails.
const vethXDPMaxMTU = 4096 - 256 - 320 - 14

// XDPMaxMTU returns the largest MTU at which the single-buffer XDP program
// can run on an interface like ic, or 0 when unknown.
func XDPMaxMTU(ic InterfaceCaps) int {
	if ic.Kind == "veth" {
		return vethXDPMaxMTU
	}
	return 0
}

// ChooseAttach decides the eBPF backend's attach mode for one interface:
// the config's wish, checked against what was probed of the interface.
//
// auto: native XDP where frames survive it and it wins — an interface
// whose driver has native XDP (advertises basic and redirect) and is not a
// veth — and TC everywhere else: veths (TC keeps GSO/GRO aggregates and the
// skb's checksum state, and needs nothing of the peer; XDP would forward
// every MTU-sized frame alone, lose offloaded checksums and need NAPI on
// the peer), virtual devices without native XDP, MTUs above what
// single-buffer XDP handles, and interfaces the probe could not read.
//
// xdp: refused (fail closed) where frames would not survive: a driver
// without native XDP, an MTU above the single-buffer limit, a veth whose
// peer sends partial checksums (TX checksum offload on) or whose offload
// state could not be read, and a veth that takes no frames XDP redirects
// into it (XDPTx false: the kernel would drop them, see xdpTx). The last
// is about the interface as an egress: a frame arriving on veth A and
// redirected out of veth B is delivered by B's peer, so every veth forced
// to XDP must take redirects.
//
// tc: always possible where the kernel has tcx (tcxOK); the gate checks
// the probe.
func ChooseAttach(want dataplane.AttachMode, ic InterfaceCaps, tcxOK bool) AttachChoice {
	c := AttachChoice{Interface: ic.Name, Want: want, XDPTx: xdpTx(ic)}
	native := ic.Features == nil || (ic.Has("basic") && ic.Has("redirect"))
	mtuLimit := XDPMaxMTU(ic)
	mtu := ic.MTU
	if ic.Peer != nil && ic.Peer.MTU > mtu {
		mtu = ic.Peer.MTU
	}
	tooBig := mtuLimit > 0 && mtu > mtuLimit
	switch want {
	case dataplane.AttachTC:
		c.Mode = dataplane.AttachTC
		c.Reason = "forced by config"
		if !tcxOK {
			c.Refused, c.Reason = true, "this kernel has no tcx links (kernel >= 6.6)"
		}
		return c
	case dataplane.AttachXDP:
		c.Mode = dataplane.AttachXDP
		var why []string
		if !native {
			why = append(why, fmt.Sprintf("driver %s has no native XDP (advertises: %s)", orUnknown(ic.Driver), strings.Join(ic.Features, ", ")))
		}
		if tooBig {
			why = append(why, fmt.Sprintf("MTU %d is above the %d bytes single-buffer XDP handles on %s", mtu, mtuLimit, ic.Kind))
		}
		if ic.Kind == "veth" {
			switch {
			case ic.Peer == nil:
				why = append(why, "cannot read the veth peer's offload state ("+orUnknown(ic.PeerErr)+"): partial checksums from its sockets would not survive XDP")
			case ic.Peer.TXChecksum:
				why = append(why, fmt.Sprintf("veth peer %s has TX checksum offload on: the partial checksums its sockets send do not survive XDP (turn it off with `ethtool -K %s tx off`, or use attach tc)", ic.Peer.Name, ic.Peer.Name))
			}
			if !c.XDPTx {
				why = append(why, vethNoXDPTx(ic))
			}
		}
		if len(why) > 0 {
			c.Mode, c.Refused, c.Reason = "", true, strings.Join(why, "; ")
			return c
		}
		c.Reason = "forced by config"
		return c
	}
	c.Mode = dataplane.AttachTC
	switch {
	case !ic.Exists:
		c.Reason = "interface not probed: TC is safe everywhere"
	case ic.Kind == "veth":
		why := "veth: TC keeps GSO/GRO aggregates and the skb's checksum state; XDP would forward every MTU-sized frame alone"
		if ic.Peer != nil {
			if ic.Peer.TXChecksum {
				why += ", and the peer's partial checksums (TX checksum offload on) would not survive it"
			}
		}
		if !c.XDPTx {
			why += ", and it takes no frames XDP redirects into it (" + vethNoXDPTxShort(ic) + ")"
		}
		c.Reason = why
	case !native:
		c.Reason = fmt.Sprintf("driver %s has no native XDP (advertises: %s); generic XDP is slower than TC", orUnknown(ic.Driver), strings.Join(ic.Features, ", "))
	case tooBig:
		c.Reason = fmt.Sprintf("MTU %d is above the %d bytes single-buffer XDP handles", mtu, mtuLimit)
	case ic.Features == nil && ic.FeaturesErr != "":
		c.Reason = "XDP features unknown (" + ic.FeaturesErr + "): TC is safe everywhere"
	default:
		c.Mode = dataplane.AttachXDP
		c.Reason = fmt.Sprintf("native XDP (driver %s: %s)", orUnknown(ic.Driver), strings.Join(ic.Features, ", "))
		if !c.XDPTx {
			c.Reason += "; it takes no XDP redirects (no ndo-xmit): packets routed into it from XDP interfaces go through the kernel"
		}
	}
	if c.Mode == dataplane.AttachTC && !tcxOK {
		if native && !tooBig {
			c.Mode = dataplane.AttachXDP
			c.Reason += "; but this kernel has no tcx links: native XDP instead"
		} else {
			c.Mode, c.Refused = "", true
			c.Reason += "; but this kernel has no tcx links (kernel >= 6.6)"
		}
	}
	return c
}

// xdpTx says whether frames XDP redirects into the interface arrive.
//
// The kernel decides with the target's own xdp-features: __xdp_enqueue
// (kernel/bpf/devmap.c, 6.3+) refuses a redirect into a device without
// NETDEV_XDP_ACT_NDO_XMIT (-EOPNOTSUPP), and the frame is dropped after the
// program returned XDP_REDIRECT (a veth counts it in the ingress queue's
// rx_queue_N_drops, nothing else sees it). So the interface must advertise
// ndo-xmit, as read from the netdev netlink family.
//
// A veth sets that flag on one end (drivers/net/veth.c) when an XDP program
// is attached to its peer (veth_xdp_set), when GRO is turned on while the
// peer is up (veth_set_features), or when the pair is made or its channels
// change with GRO requested on the peer (veth_set_xdp_features). GRO turned
// on while the peer is down, e.g. `ethtool -K` before `ip link set up`,
// sets nothing, and veth_open does not either: the peer then runs NAPI
// once up, yet every redirect into our end is refused (measured on 6.18).
// The peer's GRO is therefore no evidence on its own; where the peer was
// read it must also run NAPI, which veth_xdp_xmit needs (a frame sent to a
// peer without a NAPI instance is dropped, -ENXIO).
//
// Unknown features (kernels before 6.3 checked only for ndo_xdp_xmit) are
// taken as yes, except for a veth, which then rests on its peer.
func xdpTx(ic InterfaceCaps) bool {
	if ic.Features == nil {
		if ic.Kind == "veth" {
			return ic.Peer != nil && (ic.Peer.GRO || ic.Peer.XDP)
		}
		return true
	}
	if !ic.Has("ndo-xmit") {
		return false
	}
	if ic.Kind == "veth" && ic.Peer != nil {
		return ic.Peer.GRO || ic.Peer.XDP
	}
	return true
}

// vethNoXDPTxShort says in a clause why veth ic takes no XDP redirects.
func vethNoXDPTxShort(ic InterfaceCaps) string {
	switch {
	case ic.Peer != nil && !ic.Peer.GRO && !ic.Peer.XDP:
		return fmt.Sprintf("its peer %s runs no NAPI: GRO off, no XDP program", ic.Peer.Name)
	case ic.Features == nil:
		return "its XDP features and its peer are unknown"
	default:
		return "it does not advertise ndo-xmit, so the kernel refuses the redirects"
	}
}

// vethNoXDPTx is the refusal reason of forced XDP on a veth that takes no
// XDP redirects, with what to do about it.
func vethNoXDPTx(ic InterfaceCaps) string {
	peer := "its peer"
	if ic.Peer != nil {
		peer = ic.Peer.Name
	}
	why := fmt.Sprintf("veth %s takes no frames XDP redirects into it (%s; packets routed out of it would go through the kernel, not XDP): ", ic.Name, vethNoXDPTxShort(ic))
	if ic.Peer != nil && (ic.Peer.GRO || ic.Peer.XDP) && ic.Features != nil {
		// The peer runs NAPI but the flag is off: GRO was turned on
		// while the peer was down.
		return why + fmt.Sprintf("%s has GRO on, but turned on while %s was down, which the kernel does not count; with %s up run `ethtool -K %s gro off; ethtool -K %s gro on`, attach an XDP program to %s, or use attach tc", peer, peer, peer, peer, peer, peer)
	}
	return why + fmt.Sprintf("turn GRO on for %s while it is up (`ethtool -K %s gro on`), attach an XDP program to it, or use attach tc", peer, peer)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// AttachChoices decides every interface of cfg on host h (interfaces the
// probe did not see are decided on what is known: nothing, so TC).
func AttachChoices(cfg *dataplane.Config, h *Host) []AttachChoice {
	tcx := h.Status(ProbeTCX).Status != NotSupported
	out := make([]AttachChoice, 0, len(cfg.Interfaces))
	for _, it := range cfg.Interfaces {
		ic, ok := h.Interfaces[it.Name]
		if !ok {
			ic = InterfaceCaps{Name: it.Name}
		}
		out = append(out, ChooseAttach(it.Attach, ic, tcx))
	}
	return out
}
