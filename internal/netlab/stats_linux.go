//go:build linux

package netlab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/ethtool"
)

// EthtoolStats returns the driver statistics of iface in ns (what
// `ethtool -S` prints), by name.
func EthtoolStats(ns *NS, iface string) (map[string]uint64, error) {
	var out map[string]uint64
	err := ns.Do(func() error {
		var err error
		out, err = ethtool.Stats(iface)
		if err != nil {
			return fmt.Errorf("read driver statistics in %s: %w", ns, err)
		}
		return nil
	})
	return out, err
}

// VethDrops are the frames the kernel dropped on one direction of a veth
// pair, by its own counters: losses outside any program under test, which
// an exact count must add back.
type VethDrops struct {
	// XDPXmitErrors: XDP frames (XDP_TX, redirects, the live-frames
	// flood) the sending end could not put into its peer's ring because
	// it was full (the sender's tx_queue_<n>_xdp_xmit_errors).
	XDPXmitErrors uint64
	// RxQueueDrops: frames the receiving end dropped taking them off its
	// ring (its rx_queue_<n>_drops).
	RxQueueDrops uint64
	// TxDropped: what else the sending end dropped: socket buffers
	// with the peer's ring full, and XDP frames refused whole because the
	// peer runs no NAPI (GRO off and no XDP program on it). It is the
	// link's tx_dropped, less the XDP transmit errors the kernel folds
	// into it.
	TxDropped uint64
}

// Total is the sum of every drop.
func (d VethDrops) Total() uint64 { return d.XDPXmitErrors + d.RxQueueDrops + d.TxDropped }

// Sub returns d - o, field by field (counters read before and after).
func (d VethDrops) Sub(o VethDrops) VethDrops {
	return VethDrops{d.XDPXmitErrors - o.XDPXmitErrors, d.RxQueueDrops - o.RxQueueDrops, d.TxDropped - o.TxDropped}
}

// ReadVethDrops reads the drop counters of the direction from sendIf (in
// sendNS) to its peer recvIf (in recvNS).
func ReadVethDrops(sendNS *NS, sendIf string, recvNS *NS, recvIf string) (VethDrops, error) {
	var d VethDrops
	sent, err := EthtoolStats(sendNS, sendIf)
	if err != nil {
		return d, err
	}
	recv, err := EthtoolStats(recvNS, recvIf)
	if err != nil {
		return d, err
	}
	for k, v := range sent {
		if strings.HasPrefix(k, "tx_queue_") && strings.HasSuffix(k, "_xdp_xmit_errors") {
			d.XDPXmitErrors += v
		}
	}
	for k, v := range recv {
		if strings.HasPrefix(k, "rx_queue_") && strings.HasSuffix(k, "_drops") && !strings.HasSuffix(k, "_xdp_drops") {
			d.RxQueueDrops += v
		}
	}
	err = withNetlink(sendNS, func(h *netlink.Handle) error {
		link, err := h.LinkByName(sendIf)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", sendIf, sendNS, err)
		}
		if st := link.Attrs().Statistics; st != nil && st.TxDropped > d.XDPXmitErrors {
			d.TxDropped = st.TxDropped - d.XDPXmitErrors
		}
		return nil
	})
	return d, err
}

// Offloads are the offload features of a network device that decide how
// frames cross a veth (see Options.KernelVethDefaults).
type Offloads struct {
	// GRO: generic receive offload (on a veth, also a NAPI instance).
	GRO bool
	// TxChecksum: TX checksum offload (sockets leave L4 sums partial).
	TxChecksum bool
	// TSO: TCP segmentation offload (sockets hand over 64 KB segments).
	TSO bool
}

// ReadOffloads reads the offload features of iface in ns back from the
// kernel.
func ReadOffloads(ns *NS, iface string) (Offloads, error) {
	var o Offloads
	err := ns.Do(func() error {
		for _, f := range []struct {
			cmd uint32
			to  *bool
		}{{unix.ETHTOOL_GGRO, &o.GRO}, {unix.ETHTOOL_GTXCSUM, &o.TxChecksum}, {unix.ETHTOOL_GTSO, &o.TSO}} {
			v, err := ethtool.Feature(iface, f.cmd)
			if err != nil {
				return fmt.Errorf("read offloads in %s: %w", ns, err)
			}
			*f.to = v
		}
		return nil
	})
	return o, err
}

// ChecksumErrors are a namespace's counts of received packets dropped for
// a bad checksum (`nstat -az`: /proc/net/snmp and /proc/net/snmp6).
type ChecksumErrors struct {
	TCP  uint64 // Tcp InCsumErrors (IPv4 and IPv6: one counter)
	UDP  uint64 // Udp InCsumErrors
	UDP6 uint64 // Udp6InCsumErrors
	IP   uint64 // IpExt InCsumErrors (IPv4 header checksum)
	ICMP uint64 // Icmp InCsumErrors
	// ICMP6 is Icmp6InCsumErrors.
	ICMP6 uint64
}

// Total is the sum of every counter.
func (c ChecksumErrors) Total() uint64 { return c.TCP + c.UDP + c.UDP6 + c.IP + c.ICMP + c.ICMP6 }

// Sub returns c - o, field by field.
func (c ChecksumErrors) Sub(o ChecksumErrors) ChecksumErrors {
	return ChecksumErrors{c.TCP - o.TCP, c.UDP - o.UDP, c.UDP6 - o.UDP6, c.IP - o.IP, c.ICMP - o.ICMP, c.ICMP6 - o.ICMP6}
}

// String names the non-zero counters as nstat does, or "none".
func (c ChecksumErrors) String() string {
	var parts []string
	for _, f := range []struct {
		name string
		v    uint64
	}{{"TcpInCsumErrors", c.TCP}, {"UdpInCsumErrors", c.UDP}, {"Udp6InCsumErrors", c.UDP6},
		{"IpExtInCsumErrors", c.IP}, {"IcmpInCsumErrors", c.ICMP}, {"Icmp6InCsumErrors", c.ICMP6}} {
		if f.v > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", f.name, f.v))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// ReadChecksumErrors reads the checksum error counters of ns.
func ReadChecksumErrors(ns *NS) (ChecksumErrors, error) {
	var c ChecksumErrors
	err := ns.Do(func() error {
		snmp, err := ReadSNMP()
		if err != nil {
			return err
		}
		c = ChecksumErrors{TCP: snmp["TcpInCsumErrors"], UDP: snmp["UdpInCsumErrors"], UDP6: snmp["Udp6InCsumErrors"],
			IP: snmp["IpExtInCsumErrors"], ICMP: snmp["IcmpInCsumErrors"], ICMP6: snmp["Icmp6InCsumErrors"]}
		return nil
	})
	if err != nil {
		return c, fmt.Errorf("read checksum errors in %s: %w", ns, err)
	}
	return c, nil
}

// ReadSNMP returns the calling thread's network namespace's SNMP counters
// (/proc/net/snmp, /proc/net/netstat and /proc/net/snmp6) named as nstat
// names them ("TcpInCsumErrors", "IpExtInCsumErrors", "Udp6InDatagrams");
// call it inside NS.Do. It reads
// /proc/thread-self/net: /proc/net follows the process's first thread,
// which is not in the namespace.
func ReadSNMP() (map[string]uint64, error) {
	out := map[string]uint64{}
	if err := readSNMPTable("/proc/thread-self/net/snmp", out); err != nil {
		return nil, err
	}
	if err := readSNMPTable("/proc/thread-self/net/netstat", out); err != nil {
		return nil, err
	}
	if err := readSNMP6("/proc/thread-self/net/snmp6", out); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return out, nil
}

// readSNMPTable parses /proc/net/snmp or /proc/net/netstat: pairs of lines, "Proto: names" then
// "Proto: values".
func readSNMPTable(path string, out map[string]uint64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(values) || len(names) < 2 || names[0] != values[0] {
			return fmt.Errorf("parse %s: lines %d and %d do not pair", path, i+1, i+2)
		}
		proto := strings.TrimSuffix(names[0], ":")
		for j := 1; j < len(names); j++ {
			// Signed in the kernel for a few gauges (Tcp MaxConn is -1).
			v, err := strconv.ParseInt(values[j], 10, 64)
			if err != nil {
				return fmt.Errorf("parse %s: %s%s: %w", path, proto, names[j], err)
			}
			out[proto+names[j]] = uint64(v)
		}
	}
	return nil
}

// readSNMP6 parses /proc/net/snmp6: "Name value" per line.
func readSNMP6(path string, out map[string]uint64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		v, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			return fmt.Errorf("parse %s: %s: %w", path, fields[0], err)
		}
		out[fields[0]] = v
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// RunsNAPI reports whether iface in ns runs NAPI, which a veth needs to
// receive frames XDP redirects into its peer (and the live-frames
// generator's): an XDP program is attached or GRO is on.
func RunsNAPI(ns *NS, iface string) (bool, error) {
	var xdp bool
	err := withNetlink(ns, func(h *netlink.Handle) error {
		link, err := h.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", iface, ns, err)
		}
		xdp = link.Attrs().Xdp != nil && link.Attrs().Xdp.Attached
		return nil
	})
	if err != nil || xdp {
		return xdp, err
	}
	off, err := ReadOffloads(ns, iface)
	return off.GRO, err
}
