package userspacebackend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// newDefaultsEnv is newLabEnv on veths as the kernel makes them (GRO off,
// TX checksum offload and TSO on), as users and containers have them,
// and without the pass-through counters on the client and server ends:
// nothing in the client and server namespaces differs from hand-made
// ones.
func newDefaultsEnv(t testing.TB) *labEnv {
	t.Helper()
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, &netlab.Options{KernelVethDefaults: true})
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatalf("resolve neighbours: %v", err)
	}
	e := &labEnv{l: l}
	for _, a := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		for _, p := range []uint16{portUDP, portDenied} {
			stop, err := netlab.UDPEcho(ctx, l.Server, netip.AddrPortFrom(a, p))
			if err != nil {
				t.Fatalf("udp echo: %v", err)
			}
			t.Cleanup(stop)
		}
		stop, err := netlab.TCPEcho(ctx, l.Server, netip.AddrPortFrom(a, portTCP))
		if err != nil {
			t.Fatalf("tcp echo: %v", err)
		}
		t.Cleanup(stop)
	}
	return e
}

// csumErrors sums every *InCsumErrors counter of the namespace
// (/proc/net/snmp: Ip, Icmp, Tcp, Udp, UdpLite; /proc/net/snmp6: the
// IPv6 ones), what `nstat -az | grep CsumErrors` shows.
func csumErrors(t testing.TB, ns *netlab.NS) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	err := ns.Do(func() error {
		// thread-self: /proc/self/net is the namespace of the process's
		// main thread, not of this (switched) one.
		snmp, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		lines := strings.Split(string(snmp), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) != len(vals) || len(names) == 0 {
				continue
			}
			for j := 1; j < len(names); j++ {
				if strings.HasSuffix(names[j], "CsumErrors") {
					v, _ := strconv.ParseUint(vals[j], 10, 64)
					out[strings.TrimSuffix(names[0], ":")+names[j]] = v
				}
			}
		}
		snmp6, err := os.ReadFile("/proc/thread-self/net/snmp6")
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(bytes.NewReader(snmp6))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && strings.HasSuffix(f[0], "CsumErrors") {
				v, _ := strconv.ParseUint(f[1], 10, 64)
				out[f[0]] = v
			}
		}
		return sc.Err()
	})
	if err != nil {
		t.Fatalf("read %s checksum counters: %v", ns, err)
	}
	if len(out) < 4 {
		t.Fatalf("found only %v checksum error counters in %s", out, ns)
	}
	return out
}

func csumDelta(before, after map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// TestIntegrationKernelDefaultVeths: on kernel-default veths (offloaded,
// so partial, checksums from both ends' sockets) UDP and TCP round trips
// pass both ways over IPv4 and IPv6 with no checksum error counted in the
// server's or the client's namespace; denied traffic stays denied.
func TestIntegrationKernelDefaultVeths(t *testing.T) {
	e := newDefaultsEnv(t)
	l := e.l
	b := newBackend(t, e, nil, nil)
	srv0, cli0 := csumErrors(t, l.Server), csumErrors(t, l.Client)
	for _, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		if err := udpRT(l, 0, dst, portUDP, 3*time.Second); err != nil {
			t.Errorf("allowed udp to %s: %v", dst, err)
		}
		if err := tcpRT(l, dst, 3*time.Second); err != nil {
			t.Errorf("allowed tcp to %s: %v", dst, err)
		}
		if err := udpRT(l, 0, dst, portDenied, 300*time.Millisecond); err == nil {
			t.Errorf("denied udp to %s:%d got through", dst, portDenied)
		}
	}
	if d := csumDelta(srv0, csumErrors(t, l.Server)); len(d) != 0 {
		t.Errorf("server counted checksum errors: %v", d)
	}
	if d := csumDelta(cli0, csumErrors(t, l.Client)); len(d) != 0 {
		t.Errorf("client counted checksum errors: %v", d)
	}
	if n := counter(t, b, "checksums_completed"); n == 0 {
		t.Error("checksums_completed = 0: the lab did not send partial checksums, so the test proves nothing")
	}
}

// TestIntegrationKernelDefaultsBulkTCP: 100 MB over one TCP connection
// through the firewall on kernel-default veths arrive whole, with no
// checksum error counted on either end.
func TestIntegrationKernelDefaultsBulkTCP(t *testing.T) {
	const total = 100 << 20
	e := newDefaultsEnv(t)
	l := e.l
	b := newBackend(t, e, nil, bulkConfig(l))
	srv0, cli0 := csumErrors(t, l.Server), csumErrors(t, l.Client)
	got, err := tcpBulk(l, netip.AddrPortFrom(l.ServerAddr4, portTCP+1), total, 60*time.Second)
	if err != nil {
		t.Fatalf("bulk transfer: %v (after %d bytes)", err, got)
	}
	if got != total {
		t.Fatalf("server received %d bytes, want %d", got, total)
	}
	if d := csumDelta(srv0, csumErrors(t, l.Server)); len(d) != 0 {
		t.Errorf("server counted checksum errors: %v", d)
	}
	if d := csumDelta(cli0, csumErrors(t, l.Client)); len(d) != 0 {
		t.Errorf("client counted checksum errors: %v", d)
	}
	t.Logf("checksums completed: %d, forwarded: %d", counter(t, b, "checksums_completed"), counter(t, b, "forwarded"))
}

// bulkConfig is netlabConfig plus TCP to portTCP+1, the bulk sink's port.
func bulkConfig(l *netlab.Lab) *dataplane.Config {
	cfg := netlabConfig(l)
	cfg.Policies = append(cfg.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP,
		DestinationPorts: []dataplane.PortRange{{First: portTCP + 1, Last: portTCP + 1}}, Action: dataplane.ActionAllow})
	return cfg
}

// waitCounter polls a global counter until it reaches want (a worker
// publishes its counts after the batch it transmitted, so a test can see
// the traffic before the count) and returns its value then, or at the
// deadline.
func waitCounter(t testing.TB, b *Backend, name string, want uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		v := counter(t, b, name)
		if v >= want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tcpBulk sends n bytes from the client to a sink on dst in the server
// namespace and returns how many the sink read.
func tcpBulk(l *netlab.Lab, dst netip.AddrPort, n int64, timeout time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var ln net.Listener
	if err := l.Server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", dst.String())
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		context.AfterFunc(ctx, func() { c.Close() })
		m, _ := io.Copy(io.Discard, c)
		got <- m
	}()
	var conn net.Conn
	if err := l.Client.Do(func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", dst.String())
		return err
	}); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 256<<10)
	for sent := int64(0); sent < n; {
		k, err := conn.Write(buf[:min(int64(len(buf)), n-sent)])
		sent += int64(k)
		if err != nil {
			conn.Close()
			return <-got, fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	conn.Close()
	select {
	case m := <-got:
		return m, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// setMTUs sets the MTU of both ends of the client and server links.
func setMTUs(t testing.TB, l *netlab.Lab, client, server int) {
	t.Helper()
	for _, x := range []struct {
		ns   *netlab.NS
		name string
		mtu  int
	}{{l.Client, l.ClientIf, client}, {l.Firewall, l.FwClientIf, client}, {l.Firewall, l.FwServerIf, server}, {l.Server, l.ServerIf, server}} {
		if err := x.ns.Do(func() error {
			lk, err := netlink.LinkByName(x.name)
			if err != nil {
				return err
			}
			return netlink.LinkSetMTU(lk, x.mtu)
		}); err != nil {
			t.Fatalf("set MTU %d on %s: %v", x.mtu, x.name, err)
		}
	}
}

// TestIntegrationJumboRefused: with MTU 9000 on every link Apply refuses,
// naming each interface and its MTU, and attaches nothing.
func TestIntegrationJumboRefused(t *testing.T) {
	e := newDefaultsEnv(t)
	l := e.l
	setMTUs(t, l, 9000, 9000)
	b, err := New(context.Background(), &Options{NetNS: l.Firewall.Path})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.Apply(context.Background(), netlabConfig(l))
	var nse *dataplane.NotSupportedError
	if !errors.As(err, &nse) || len(nse.Reasons) != 2 {
		t.Fatalf("Apply with MTU 9000 = %v, want a refusal per interface", err)
	}
	for i, name := range []string{l.FwClientIf, l.FwServerIf} {
		r := nse.Reasons[i]
		if !strings.HasPrefix(r, fmt.Sprintf("interfaces[%d].name: %s has MTU 9000", i, name)) || !strings.Contains(r, strconv.Itoa(MaxMTU)) {
			t.Errorf("reason %d = %q", i, r)
		}
	}
	for _, name := range []string{l.FwClientIf, l.FwServerIf} {
		if xdpAttached(t, l.Firewall, name) {
			t.Errorf("%s has an XDP program after the refused Apply", name)
		}
	}
}

// TestIntegrationLargeMTU: MTU 3500 on every link (4096-byte UMEM frames):
// a 3400-byte UDP datagram is answered and a TCP transfer passes, on
// kernel-default veths.
func TestIntegrationLargeMTU(t *testing.T) {
	e := newDefaultsEnv(t)
	l := e.l
	setMTUs(t, l, 3500, 3500)
	b := newBackend(t, e, nil, bulkConfig(l))
	if fs := b.frameSize.Load(); fs != maxFrameSize {
		t.Errorf("frame size %d, want %d for MTU 3500", fs, maxFrameSize)
	}
	payload := bytes.Repeat([]byte{0xa5}, 3400)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	got, err := netlab.UDPRoundTrip(ctx, l.Client, netip.AddrPort{}, netip.AddrPortFrom(l.ServerAddr4, portUDP), payload)
	if err != nil || !bytes.Equal(got, payload) {
		t.Errorf("3400-byte datagram: %d bytes back, %v", len(got), err)
	}
	if n, err := tcpBulk(l, netip.AddrPortFrom(l.ServerAddr6, portTCP+1), 8<<20, 30*time.Second); err != nil || n != 8<<20 {
		t.Errorf("tcp transfer at MTU 3500: %d bytes, %v", n, err)
	}
	if v := counter(t, b, "dropped_too_big") + counter(t, b, "fragmented"); v != 0 {
		t.Errorf("%d packets were too big for an MTU-3500 path", v)
	}
}

// icmpConfig is netlabConfig plus ICMP echo and traceroute's UDP ports
// from clients to servers.
func icmpConfig(l *netlab.Lab) *dataplane.Config {
	cfg := netlabConfig(l)
	cfg.Policies = append(cfg.Policies,
		dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoICMP, Action: dataplane.ActionAllow},
		dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoICMPv6, Action: dataplane.ActionAllow},
		dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP,
			DestinationPorts: []dataplane.PortRange{{First: traceBase, Last: traceBase + 9}}, Action: dataplane.ActionAllow},
	)
	return cfg
}

const traceBase = 33434

// ping runs iputils ping in ns and returns its output.
func ping(t testing.TB, ns *netlab.NS, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatalf("ping (iputils-ping, which .ci/run installs) is not installed: %v", err)
	}
	out, _ := exec.Command("ip", append([]string{"netns", "exec", ns.Name, "ping", "-n", "-c", "1", "-W", "2"}, args...)...).CombinedOutput()
	return string(out)
}

// TestIntegrationTTLExceeded: `ping -t 1` through the firewall is answered
// "time to live exceeded" from the firewall's address on the client link
// (IPv4 and IPv6), counted; a denied flow with TTL 1 is not answered.
func TestIntegrationTTLExceeded(t *testing.T) {
	e := newDefaultsEnv(t)
	l := e.l
	b := newBackend(t, e, nil, icmpConfig(l))
	out := ping(t, l.Client, "-t", "1", l.ServerAddr4.String())
	if !strings.Contains(out, "From "+l.FwClientAddr4.String()) || !strings.Contains(out, "Time to live exceeded") {
		t.Errorf("ping -t 1 %s:\n%s", l.ServerAddr4, out)
	}
	out = ping(t, l.Client, "-6", "-t", "1", l.ServerAddr6.String())
	if !strings.Contains(out, "From "+l.FwClientAddr6.String()) || !strings.Contains(out, "Time exceeded: Hop limit") {
		t.Errorf("ping -6 -t 1 %s:\n%s", l.ServerAddr6, out)
	}
	if n := waitCounter(t, b, "icmp_time_exceeded_sent", 2); n != 2 {
		t.Errorf("icmp_time_exceeded_sent = %d, want 2", n)
	}
	// Denied (no servers -> clients policy): no answer, only the policy drop.
	before := counter(t, b, "dropped_policy")
	out = ping(t, l.Server, "-t", "1", l.ClientAddr4.String())
	if strings.Contains(out, "Time to live exceeded") {
		t.Errorf("a denied packet with TTL 1 was answered:\n%s", out)
	}
	if counter(t, b, "dropped_policy") == before || counter(t, b, "icmp_time_exceeded_sent") != 2 {
		t.Error("the denied ping was not dropped by the policy, or was answered")
	}
	// And the normal path still works.
	if out := ping(t, l.Client, l.ServerAddr4.String()); !strings.Contains(out, "1 received") {
		t.Errorf("ping %s:\n%s", l.ServerAddr4, out)
	}
}

// TestIntegrationTooBig: towards a 1280-MTU link, `ping -M do -s 1400`
// gets "frag needed" (IPv4) or "packet too big" (IPv6) with mtu 1280 from
// the firewall; an IPv4 datagram without DF is fragmented and arrives
// whole at the server.
func TestIntegrationTooBig(t *testing.T) {
	e := newDefaultsEnv(t)
	l := e.l
	setMTUs(t, l, 1500, 1280)
	b := newBackend(t, e, nil, icmpConfig(l))
	// First (the errors below teach the client's kernel the path MTU, and
	// it would fragment itself): without DF, fragmented by the firewall,
	// reassembled by the server.
	// (One way: the server's own reply would come back fragmented, and
	// later fragments are not forwarded. 1400 bytes fit the client's link,
	// so the client sends one packet.)
	var conn *net.UDPConn
	dst := netip.AddrPortFrom(l.ServerAddr4, traceBase+5)
	if err := l.Server.Do(func() error {
		var err error
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := bytes.Repeat([]byte{0x5a}, 1400)
	if err := l.Client.Do(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = setPMTUDisc(int(fd), false) }); err != nil {
			return err
		}
		if serr != nil {
			return serr
		}
		_, err = c.Write(payload)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], payload) {
		t.Errorf("1400-byte datagram without DF through a 1280 link: %d bytes, %v", n, err)
	}
	if v := waitCounter(t, b, "fragmented", 1); v != 1 {
		t.Errorf("fragmented = %d, want 1", v)
	}

	out := ping(t, l.Client, "-M", "do", "-s", "1400", l.ServerAddr4.String())
	if !strings.Contains(out, "From "+l.FwClientAddr4.String()) || !strings.Contains(out, "Frag needed and DF set (mtu = 1280)") {
		t.Errorf("ping -M do -s 1400 %s:\n%s", l.ServerAddr4, out)
	}
	out = ping(t, l.Client, "-6", "-M", "do", "-s", "1400", l.ServerAddr6.String())
	if !strings.Contains(out, "From "+l.FwClientAddr6.String()) || !strings.Contains(out, "Packet too big: mtu=1280") {
		t.Errorf("ping -6 -M do -s 1400 %s:\n%s", l.ServerAddr6, out)
	}
	if n := waitCounter(t, b, "icmp_too_big_sent", 2); n < 2 {
		t.Errorf("icmp_too_big_sent = %d, want >= 2", n)
	}

}

// TestIntegrationTraceroute: UDP probes with TTL 1 and 2, as traceroute
// sends them: the first is answered time exceeded by the firewall, the
// second reaches the server, whose "port unreachable" comes back through
// the firewall as related to the probe's session; IPv4 and IPv6. An
// ICMP error that quotes no session is dropped and counted.
func TestIntegrationTraceroute(t *testing.T) {
	e := newDefaultsEnv(t)
	l := e.l
	b := newBackend(t, e, nil, icmpConfig(l))
	for i, x := range []struct{ fw, srv netip.Addr }{{l.FwClientAddr4, l.ServerAddr4}, {l.FwClientAddr6, l.ServerAddr6}} {
		hop1, err := probe(l.Client, netip.AddrPortFrom(x.srv, traceBase+uint16(2*i)), 1)
		if err != nil || hop1.from != x.fw || !hop1.timeExceeded {
			t.Errorf("probe ttl 1 to %s: %+v, %v (want time exceeded from %s)", x.srv, hop1, err, x.fw)
		}
		hop2, err := probe(l.Client, netip.AddrPortFrom(x.srv, traceBase+uint16(2*i+1)), 2)
		if err != nil || hop2.from != x.srv || !hop2.portUnreachable {
			t.Errorf("probe ttl 2 to %s: %+v, %v (want port unreachable from it)", x.srv, hop2, err)
		}
	}
	if n := waitCounter(t, b, "related_icmp", 2); n != 2 {
		t.Errorf("related_icmp = %d, want 2", n)
	}
	// An error quoting a flow that never was: dropped.
	before := counter(t, b, "dropped_icmp_unrelated")
	if err := sendForgedUnreachable(l); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for counter(t, b, "dropped_icmp_unrelated") == before {
		if time.Now().After(deadline) {
			t.Fatal("a forged ICMP error was not counted as unrelated")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := counter(t, b, "related_icmp"); n != 2 {
		t.Errorf("related_icmp = %d after the forged error, want 2", n)
	}
}
