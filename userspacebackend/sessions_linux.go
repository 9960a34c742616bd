package userspacebackend

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/userspacebackend/internal/session"
)

// ClearSessions ends every session f selects and returns how many
// (counted as sessions_cleared). Their next packets meet the policy as a
// new flow's first packet would. A filter field that cannot be parsed is a
// *dataplane.ConfigError naming it. Safe concurrently with everything; the
// walk locks one session shard at a time.
func (b *Backend) ClearSessions(ctx context.Context, f dataplane.SessionFilter) (int, error) {
	if b == nil || b.closed.Load() {
		return 0, dataplane.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m, err := compileFilter(f)
	if err != nil {
		return 0, err
	}
	s := b.snap.Load()
	if s == nil {
		return 0, nil
	}
	n := s.sessions.EndIf(func(e *session.Entry) bool { return m.match(e, s) })
	b.cleared.Add(uint64(n))
	return n, nil
}

// sessionMatcher is a parsed dataplane.SessionFilter.
type sessionMatcher struct {
	proto    int // -1: any
	prefix   netip.Prefix
	port     uint16
	zone     string
	hasAddr  bool
	hasPort  bool
	hasZone  bool
	hasProto bool
}

func compileFilter(f dataplane.SessionFilter) (*sessionMatcher, error) {
	m := &sessionMatcher{proto: -1, port: f.Port, hasPort: f.Port != 0, zone: f.Zone, hasZone: f.Zone != ""}
	var problems []dataplane.Problem
	switch p := strings.ToLower(f.Protocol); p {
	case "", "any":
	case "tcp":
		m.proto = unix.IPPROTO_TCP
	case "udp":
		m.proto = unix.IPPROTO_UDP
	case "icmp":
		m.proto = unix.IPPROTO_ICMP
	case "icmpv6":
		m.proto = unix.IPPROTO_ICMPV6
	default:
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			problems = append(problems, dataplane.Problem{Field: "protocol", Message: fmt.Sprintf("%q is not tcp, udp, icmp, icmpv6 or a protocol number 0-255", f.Protocol)})
		}
		m.proto = int(n)
	}
	m.hasProto = m.proto >= 0
	if f.Address != "" {
		m.hasAddr = true
		if pf, err := netip.ParsePrefix(f.Address); err == nil {
			m.prefix = pf.Masked()
		} else if a, err := netip.ParseAddr(f.Address); err == nil {
			m.prefix = netip.PrefixFrom(a, a.BitLen())
		} else {
			problems = append(problems, dataplane.Problem{Field: "address", Message: fmt.Sprintf("%q is not an address or a prefix", f.Address)})
		}
	}
	if len(problems) > 0 {
		return nil, &dataplane.ConfigError{Problems: problems}
	}
	return m, nil
}

// match reports whether e is selected. Ports are TCP's and UDP's only (an
// ICMP echo's identifier is not a port); an address matches either
// endpoint, in the family the prefix is written in (a mapped IPv6 prefix
// is IPv6, as in policies). A translated session's endpoints include its
// translated ones (clearing a pool address's sessions clears the flows
// translated to it).
func (m *sessionMatcher) match(e *session.Entry, s *snapshot) bool {
	t := &e.Tuple
	x := &e.NAT
	if m.hasProto && int(t.Proto) != m.proto {
		return false
	}
	if m.hasAddr && !m.prefix.Contains(t.SrcAddr()) && !m.prefix.Contains(t.DstAddr()) &&
		!(e.Translated && (m.prefix.Contains(netip.AddrFrom4(x.Src)) || m.prefix.Contains(netip.AddrFrom4(x.Dst)))) {
		return false
	}
	if m.hasPort && (t.Proto != unix.IPPROTO_TCP && t.Proto != unix.IPPROTO_UDP ||
		t.SrcPort != m.port && t.DstPort != m.port && !(e.Translated && (x.SrcPort == m.port || x.DstPort == m.port))) {
		return false
	}
	if m.hasZone && s.zoneName(e.FromZone) != m.zone && s.zoneName(e.ToZone) != m.zone {
		return false
	}
	return true
}
