package userspacebackend

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

const iperfPort = 5201

// iperf runs an iperf3 client in the lab's client namespace against the
// server's IPv4 address for secs seconds with streams parallel streams
// and returns the received rate in Gbit/s.
func iperf(l *netlab.Lab, secs, streams int) (float64, error) {
	out, err := exec.Command("ip", "netns", "exec", l.Client.Name, "iperf3", "-J", "-c", l.ServerAddr4.String(),
		"-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams)).Output()
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		return 0, fmt.Errorf("iperf3: %v (%v): %s", err, jerr, out)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// startIperfServer runs iperf3 -s in the server namespace until the
// benchmark ends, and waits until it listens.
func startIperfServer(b *testing.B, l *netlab.Lab) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.Server.Name, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if err := cmd.Start(); err != nil {
		cancel()
		b.Fatalf("start iperf3 server: %v", err)
	}
	b.Cleanup(func() { cancel(); _ = cmd.Wait() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := exec.Command("ip", "netns", "exec", l.Server.Name, "ss", "-Hltn", "sport", "=", ":"+strconv.Itoa(iperfPort)).Output()
		if strings.Contains(string(out), "LISTEN") {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("iperf3 server did not listen")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nftConntrack installs, in the firewall namespace, the stateful firewall
// a user would write instead: a forward chain that drops by default,
// accepts established/related flows and new TCP to the iperf port from
// the client link. It returns the command that removes it.
func nftConntrack(b *testing.B, l *netlab.Lab) func() {
	b.Helper()
	rules := fmt.Sprintf(`table inet fwbench {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		iifname "%s" oifname "%s" tcp dport %d ct state new accept
	}
}
`, l.FwClientIf, l.FwServerIf, iperfPort)
	cmd := exec.Command("ip", "netns", "exec", l.Firewall.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("nft: %v: %s", err, out)
	}
	return func() {
		_ = exec.Command("ip", "netns", "exec", l.Firewall.Name, "nft", "delete", "table", "inet", "fwbench").Run()
	}
}

// BenchmarkTCPBulk: iperf3 (one stream and four, 3 s each) from client to
// server through the firewall namespace, on the netlab veth settings and
// on the kernel's defaults: kernel forwarding, nftables with conntrack,
// and this backend, in one run. Reports Gbit/s of each and the ratio
// userspace/nftables (the goal: >= 0.5), plus what bounds the
// userspace figure: forwarded frames per second and bytes per frame.
// scripts/bench-userspace-tcp.sh prints the table.
func BenchmarkTCPBulk(b *testing.B) {
	testutil.Privileged(b, testutil.NeedBPF, testutil.NeedNetNS)
	for _, tool := range []string{"iperf3", "nft", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s is not installed: %v", tool, err)
		}
	}
	const secs = 3
	for _, defaults := range []bool{false, true} {
		name := "lab"
		if defaults {
			name = "kernel-defaults"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				l := netlab.NewT(b, &netlab.Options{KernelVethDefaults: defaults})
				if err := l.ResolveNeighbors(context.Background()); err != nil {
					b.Fatal(err)
				}
				startIperfServer(b, l)
				for _, streams := range []int{1, 4} {
					kern, err := iperf(l, secs, streams)
					if err != nil {
						b.Fatalf("kernel forwarding: %v", err)
					}
					remove := nftConntrack(b, l)
					nft, err := iperf(l, secs, streams)
					remove()
					if err != nil {
						b.Fatalf("nftables: %v", err)
					}
					cfg := netlabConfig(l)
					cfg.Policies = append(cfg.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP,
						DestinationPorts: []dataplane.PortRange{{First: iperfPort, Last: iperfPort}}, Action: dataplane.ActionAllow})
					be, err := New(context.Background(), &Options{NetNS: l.Firewall.Path})
					if err != nil {
						b.Fatal(err)
					}
					if _, err := be.Apply(context.Background(), cfg); err != nil {
						be.Close()
						b.Fatal(err)
					}
					fwd0, bytes0 := counter(b, be, "forwarded"), forwardedBytes(b, be)
					start := time.Now()
					us, err := iperf(l, secs, streams)
					el := time.Since(start).Seconds()
					frames, byts := counter(b, be, "forwarded")-fwd0, forwardedBytes(b, be)-bytes0
					be.Close()
					if err != nil {
						b.Fatalf("userspace: %v", err)
					}
					sfx := fmt.Sprintf("-%dstream", streams)
					b.ReportMetric(kern, "kernel-Gbit/s"+sfx)
					b.ReportMetric(nft, "nft-Gbit/s"+sfx)
					b.ReportMetric(us, "userspace-Gbit/s"+sfx)
					b.ReportMetric(us/nft, "userspace/nft"+sfx)
					b.ReportMetric(float64(frames)/el/1e3, "userspace-kframes/s"+sfx)
					if frames > 0 {
						b.ReportMetric(float64(byts)/float64(frames), "userspace-B/frame"+sfx)
					}
				}
			}
		})
	}
}

// forwardedBytes sums the bytes of every session: what the forwarder
// carried (both directions).
func forwardedBytes(b testing.TB, be *Backend) uint64 {
	list, _, err := be.Sessions(context.Background(), 0)
	if err != nil {
		b.Fatal(err)
	}
	var n uint64
	for _, s := range list {
		n += s.Bytes
	}
	return n
}
