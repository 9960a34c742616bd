//go:build linux

package netlab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// NftTable is the nftables table [Lab.InstallNftables] creates in the
// firewall namespace (family inet: IPv4 and IPv6).
const NftTable = "fwplane_lab"

// NftAllow is one allow rule of the nftables baseline: new connections
// from the client side to the server side with this protocol and one of
// these destination ports.
type NftAllow struct {
	// Proto is 6 (TCP) or 17 (UDP).
	Proto uint8
	// Ports are destination ports; empty means any port.
	Ports []uint16
}

// NftablesOptions configures the nftables baseline; nil means: allow every
// new flow from the client side to the server side.
type NftablesOptions struct {
	// Allow lists what the client side may open towards the server side,
	// as a backend's policies would; empty means everything.
	Allow []NftAllow
}

// NftablesRuleset is the ruleset InstallNftables loads: a forward chain
// with policy drop that accepts packets of tracked connections
// (`ct state established,related`) and opens new ones only from the
// client-facing to the server-facing interface as opts allows: the
// stateful firewall a user would run with the kernel alone.
func (l *Lab) NftablesRuleset(opts *NftablesOptions) (string, error) {
	if opts == nil {
		opts = &NftablesOptions{}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", NftTable)
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n")
	b.WriteString("\t\tct state established,related accept\n")
	from := fmt.Sprintf("iifname %q oifname %q ct state new", l.FwClientIf, l.FwServerIf)
	if len(opts.Allow) == 0 {
		fmt.Fprintf(&b, "\t\t%s accept\n", from)
	}
	for i, a := range opts.Allow {
		var proto string
		switch a.Proto {
		case 6:
			proto = "tcp"
		case 17:
			proto = "udp"
		default:
			return "", fmt.Errorf("nftables baseline: allow[%d].proto %d: want 6 (TCP) or 17 (UDP)", i, a.Proto)
		}
		if len(a.Ports) == 0 {
			fmt.Fprintf(&b, "\t\t%s meta l4proto %s accept\n", from, proto)
			continue
		}
		ports := make([]string, 0, len(a.Ports))
		for _, p := range slices.Sorted(slices.Values(a.Ports)) {
			ports = append(ports, strconv.Itoa(int(p)))
		}
		fmt.Fprintf(&b, "\t\t%s %s dport { %s } accept\n", from, proto, strings.Join(slices.Compact(ports), ", "))
	}
	b.WriteString("\t}\n}\n")
	return b.String(), nil
}

// InstallNftables loads the nftables baseline (see NftablesRuleset) into
// the firewall namespace with the nft command (Debian package nftables),
// replacing an earlier one, and returns the function that removes it
// again. The lab's Close removes it too (with the namespace).
func (l *Lab) InstallNftables(opts *NftablesOptions) (remove func() error, err error) {
	rules, err := l.NftablesRuleset(opts)
	if err != nil {
		return nil, err
	}
	// Replace atomically: declare, flush and define in one transaction.
	script := fmt.Sprintf("table inet %s\ndelete table inet %s\n%s", NftTable, NftTable, rules)
	if err := l.nft(script, "-f", "-"); err != nil {
		return nil, fmt.Errorf("install nftables baseline in %s: %w", l.Firewall, err)
	}
	return func() error {
		if err := l.nft("", "delete", "table", "inet", NftTable); err != nil {
			return fmt.Errorf("remove nftables baseline from %s: %w", l.Firewall, err)
		}
		return nil
	}, nil
}

// nft runs the nft command in the firewall namespace.
func (l *Lab) nft(stdin string, args ...string) error {
	bin, err := exec.LookPath("nft")
	if err != nil {
		return fmt.Errorf("%w (install the nftables package)", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startIn(l.Firewall, cmd); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// ConntrackCount is the number of connections the kernel tracks in ns
// (net.netfilter.nf_conntrack_count; 0 while no rule uses conntrack).
func ConntrackCount(ns *NS) (uint64, error) {
	var n uint64
	err := ns.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return err
		}
		n, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("read conntrack count in %s: %w", ns, err)
	}
	return n, nil
}

// ConntrackMax is the kernel's conntrack limit as ns sees it
// (net.netfilter.nf_conntrack_max: a global setting, read-only inside a
// network namespace other than the initial one).
func ConntrackMax(ns *NS) (uint64, error) {
	var n uint64
	err := ns.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
		if err != nil {
			return err
		}
		n, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("read conntrack limit in %s: %w", ns, err)
	}
	return n, nil
}

// ConntrackClear removes every connection the kernel tracks in ns and
// waits (bounded by ctx) until its count reads 0: entries are freed after
// an RCU grace period.
func ConntrackClear(ctx context.Context, ns *NS) error {
	err := withNetlink(ns, func(h *netlink.Handle) error {
		return h.ConntrackTableFlush(netlink.ConntrackTable)
	})
	if err != nil {
		return fmt.Errorf("flush conntrack table in %s: %w", ns, err)
	}
	for {
		n, err := ConntrackCount(ns)
		if err != nil || n == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("clear conntrack table in %s: %d entries left: %w", ns, n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ConntrackFlows lists the connections the kernel tracks in ns, both
// families, with their tuples and TCP state.
func ConntrackFlows(ns *NS) ([]*netlink.ConntrackFlow, error) {
	var out []*netlink.ConntrackFlow
	err := withNetlink(ns, func(h *netlink.Handle) error {
		for _, fam := range []netlink.InetFamily{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			flows, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
			if err != nil {
				return fmt.Errorf("list conntrack table in %s: %w", ns, err)
			}
			out = append(out, flows...)
		}
		return nil
	})
	return out, err
}

// ConntrackInTCPState counts the TCP connections the kernel tracks in ns
// in conntrack state state (nl.TCP_CONNTRACK_*).
func ConntrackInTCPState(ns *NS, state uint8) (uint64, error) {
	flows, err := ConntrackFlows(ns)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, f := range flows {
		if p, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok && p.State == state {
			n++
		}
	}
	return n, nil
}
