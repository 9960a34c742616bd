package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/control"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/examples/internal/ctl"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// newLab builds a lab whose client and server ends can receive forwarded
// frames, with UDP echo servers on the server's ports.
func newLab(t *testing.T, ports ...uint16) *netlab.Lab {
	t.Helper()
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, nil)
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatal(err)
	}
	for _, end := range []struct {
		ns    *netlab.NS
		iface string
	}{{l.Client, l.ClientIf}, {l.Server, l.ServerIf}} {
		c, err := netlab.AttachCounter(end.ns, end.iface, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	for _, p := range ports {
		stop, err := netlab.UDPEcho(ctx, l.Server, netip.AddrPortFrom(l.ServerAddr4, p))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	return l
}

func labConfig(l *netlab.Lab, ports ...uint16) *dataplane.Config {
	var prs []dataplane.PortRange
	for _, p := range ports {
		prs = append(prs, dataplane.PortRange{First: p, Last: p})
	}
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: l.FwClientIf, Zone: "inside"}, {Name: l.FwServerIf, Zone: "outside"}},
		Zones:      []dataplane.Zone{{Name: "inside"}, {Name: "outside"}},
		Policies: []dataplane.Policy{{FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoUDP,
			DestinationPorts: prs, Action: dataplane.ActionAllow}},
	}
}

// roundTrip sends a datagram to the server's port and waits for its echo,
// up to three times 500 ms: on a loaded machine (CI runs test packages in
// parallel, other work shares the two CPUs) one echo can take longer than
// 500 ms, and a denied flow then costs 1.5 s, not a false failure.
func roundTrip(l *netlab.Lab, port uint16) error {
	var err error
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		var got []byte
		got, err = netlab.UDPRoundTrip(ctx, l.Client, netip.AddrPort{}, netip.AddrPortFrom(l.ServerAddr4, port), []byte("ping"))
		cancel()
		if err == nil && string(got) != "ping" {
			return fmt.Errorf("echo %q, want ping", got)
		}
		if err == nil {
			return nil
		}
	}
	return err
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// xdpAttached lists the firewall interfaces that still have an XDP program.
func xdpAttached(t *testing.T, l *netlab.Lab) []string {
	t.Helper()
	var out []string
	err := l.Firewall.Do(func() error {
		for _, name := range []string{l.FwClientIf, l.FwServerIf} {
			link, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if x := link.Attrs().Xdp; x != nil && (x.Attached || x.ProgId != 0) {
				out = append(out, name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func fwctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = ctl.Run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

// rowKey is what must be identical between the daemon's report and a
// direct read: the rows themselves, not the counts that move with time.
type rowKey struct {
	Name, Kind, Scope   string
	Detail              bool
	Capacity            uint64
	Method              string
	KeySize, ValueSize  uint32
	Counted, HasBreakup bool
}

func keys(r dataplane.ResourceReport) []rowKey {
	out := make([]rowKey, len(r.Resources))
	for i, res := range r.Resources {
		out[i] = rowKey{res.Name, res.Kind, res.Scope, res.Detail, res.Capacity, res.Method, res.KeySize, res.ValueSize,
			res.Used != nil, len(res.Breakdown) > 0}
	}
	return out
}

func TestIntegrationDaemon(t *testing.T) {
	l := newLab(t, 7000, 7001)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "fw.json")
	sock := filepath.Join(dir, "run", "fwd.sock")
	pinDir := netlab.PinDir(t)
	writeConfig(t, cfgPath, labConfig(l, 7000))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	sig := make(chan os.Signal, 1)
	readyc := make(chan readyInfo, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"--config", cfgPath, "--netns", l.Firewall.Path, "--socket", sock, "--metrics", "127.0.0.1:0", "--pin-dir", pinDir},
			&env{stderr: &logs, signals: sig, ready: func(ri readyInfo) { readyc <- ri }})
	}()
	var ri readyInfo
	select {
	case ri = <-readyc:
	case err := <-errc:
		t.Fatalf("fwd exited: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("fwd not ready after 30s:\n%s", logs.String())
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-errc
		}
	})
	if !strings.Contains(logs.String(), `msg="dataplane running" mode=ebpf fell_back=false`) {
		t.Errorf("decision not logged with mode and fell_back:\n%s", logs.String())
	}

	// Socket: owner-only.
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(sock)); di == nil || di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, want 0700", di.Mode())
	}

	if err := roundTrip(l, 7000); err != nil {
		t.Fatalf("allowed flow: %v", err)
	}
	if err := roundTrip(l, 7001); err == nil {
		t.Fatal("denied flow got through")
	}
	// The eBPF backend counts unassured sessions in its in-kernel sweep
	// (once a second): until a sweep runs after the reply, the flow is
	// still counted unassured (or, before the first sweep, the row has
	// no count). Wait for that count, so that the two reads below see
	// the same settled figures.
	waitFor(t, "the sweep to count the replied flow as assured", 5*time.Second, func() bool {
		rep, err := ri.dp.ResourceStats(context.Background())
		if err != nil || rep.Sessions == nil || rep.Sessions.Unassured != 0 {
			return false
		}
		for _, r := range rep.Resources {
			if r.Name == dataplane.ResourceSessionsUnassured && (r.Used == nil || *r.Used != 0) {
				return false
			}
		}
		return true
	})

	// fwctl show system buffers --json against a direct read.
	out, errOut, code := fwctl(t, "--socket", sock, "show", "system", "buffers", "--json")
	if code != 0 {
		t.Fatalf("fwctl show system buffers --json: exit %d: %s", code, errOut)
	}
	var viaCtl dataplane.ResourceReport
	if err := json.Unmarshal([]byte(out), &viaCtl); err != nil {
		t.Fatalf("decode fwctl output: %v\n%s", err, out)
	}
	direct, err := ri.dp.ResourceStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(keys(direct), keys(viaCtl)); diff != "" {
		t.Errorf("fwctl rows differ from a direct read (-direct +fwctl):\n%s", diff)
	}
	if viaCtl.Mode != direct.Mode || viaCtl.Generation != direct.Generation || viaCtl.Generation != 1 {
		t.Errorf("fwctl mode/generation %s/%d, direct %s/%d", viaCtl.Mode, viaCtl.Generation, direct.Mode, direct.Generation)
	}
	// No traffic runs between the two reads, so the counts agree exactly.
	if diff := cmp.Diff(direct.Resources, viaCtl.Resources, cmpopts.IgnoreFields(dataplane.Resource{}, "Cost", "Restarts")); diff != "" {
		t.Errorf("used values differ (-direct +fwctl):\n%s", diff)
	}
	want := &dataplane.SessionCounts{IPv4: 1, Total: 1}
	if diff := cmp.Diff(want, viaCtl.Sessions); diff != "" {
		t.Errorf("sessions (-want +fwctl):\n%s", diff)
	}

	// The table itself.
	out, errOut, code = fwctl(t, "--socket", sock, "show", "system", "buffers")
	if code != 0 || !strings.Contains(out, "Resource") || !strings.Contains(out, "Active sessions: IPv4 1, IPv6 0, total 1") {
		t.Errorf("show system buffers: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code = fwctl(t, "--socket", sock, "show", "capability")
	if code != 0 || !strings.HasPrefix(out, "backend: ebpf") {
		t.Errorf("show capability: exit %d\n%s", code, out)
	}
	out, errOut, code = fwctl(t, "--socket", sock, "show", "sessions", "--limit", "10", "--json")
	var sr control.SessionsReply
	if code != 0 || json.Unmarshal([]byte(out), &sr) != nil {
		t.Fatalf("show sessions --json: exit %d\n%s%s", code, out, errOut)
	}
	if len(sr.Sessions) != 1 || sr.Sessions[0].Destination != netip.AddrPortFrom(l.ServerAddr4, 7000).String() || sr.Counts.Total != 1 {
		t.Errorf("sessions = %+v, want the one flow to %s:7000", sr, l.ServerAddr4)
	}

	// Metrics, parsed by Prometheus' own parser.
	fams := scrape(t, ri.metrics)
	v4cap, _ := direct.Find("fw_sessions_v4", "global")
	checks := []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"fwplane_sessions_active", map[string]string{"family": "ipv4", "mode": "ebpf"}, 1},
		{"fwplane_sessions_active", map[string]string{"family": "total", "mode": "ebpf"}, 1},
		{"fwplane_resource_capacity", map[string]string{"resource": "fw_sessions_v4"}, float64(v4cap.Capacity)},
		{"fwplane_resource_used", map[string]string{"resource": "fw_sessions_v4"}, 1},
		{"fwplane_config_generation", map[string]string{"mode": "ebpf"}, 1},
	}
	for _, c := range checks {
		got, ok := sample(fams, c.family, c.labels)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.family, c.labels, got, ok, c.want)
		}
	}

	// SIGHUP with a bad config: refused with every problem, old config
	// keeps forwarding.
	writeConfig(t, cfgPath, badConfig)
	sig <- syscall.SIGHUP
	waitFor(t, "the refused reload in the log", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), "reload refused: the running config is unchanged")
	})
	for _, p := range []string{"problem=\"policies[0].to_zone", "problem=\"policies[0].action", "problem=\"policies[0].destination_ports[0]"} {
		if !strings.Contains(logs.String(), p) {
			t.Errorf("log lacks %s:\n%s", p, logs.String())
		}
	}
	if err := roundTrip(l, 7000); err != nil {
		t.Errorf("after a refused reload the old config stopped forwarding: %v", err)
	}
	// fwctl reload gets the same refusal, with the problems.
	_, errOut, code = fwctl(t, "--socket", sock, "reload")
	if code != 1 || !strings.Contains(errOut, "reload refused, the running config is unchanged") || !strings.Contains(errOut, "policies[0].to_zone") {
		t.Errorf("fwctl reload of a bad config: exit %d, stderr %q", code, errOut)
	}

	// An unsupported config (static routes on the eBPF backend) is refused
	// the same way.
	unsup := labConfig(l, 7000, 7001)
	unsup.Forwarding.Routes = []dataplane.Route{{Destination: "10.99.0.0/16", Interface: l.FwServerIf}}
	writeConfig(t, cfgPath, unsup)
	_, errOut, code = fwctl(t, "--socket", sock, "reload")
	if code != 1 || !strings.Contains(errOut, "static routes") {
		t.Errorf("fwctl reload of an unsupported config: exit %d, stderr %q", code, errOut)
	}
	if err := roundTrip(l, 7001); err == nil {
		t.Error("refused config took effect: 7001 forwarded")
	}

	// A good config is applied and its generation logged.
	writeConfig(t, cfgPath, labConfig(l, 7000, 7001))
	sig <- syscall.SIGHUP
	waitFor(t, "the applied reload in the log", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), `msg="config applied"`) && strings.Contains(logs.String(), "generation=2")
	})
	if err := roundTrip(l, 7001); err != nil {
		t.Errorf("after reload allowing 7001: %v", err)
	}

	// A second daemon on the same socket refuses to start and leaves the
	// first one alone.
	var logs2 syncBuffer
	err = run(context.Background(), []string{"--config", cfgPath, "--netns", l.Firewall.Path, "--socket", sock, "--metrics", ""},
		&env{stderr: &logs2})
	if !errors.Is(err, control.ErrInUse) {
		t.Errorf("second fwd: %v, want ErrInUse\n%s", err, logs2.String())
	}
	// One with its own socket but the same pinned dataplane is refused
	// too, naming the holder; so is removing it.
	var logs3 syncBuffer
	err = run(context.Background(), []string{"--config", cfgPath, "--netns", l.Firewall.Path, "--socket", filepath.Join(dir, "other.sock"),
		"--metrics", "", "--pin-dir", pinDir}, &env{stderr: &logs3})
	if !errors.Is(err, dataplane.ErrPinnedInUse) || !strings.Contains(logs3.String(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("fwd on a held pinned dataplane: %v, want ErrPinnedInUse naming pid %d\n%s", err, os.Getpid(), logs3.String())
	}
	var logs4 syncBuffer
	if err := run(context.Background(), []string{"--remove", "x", "--pin-dir", pinDir}, &env{stderr: &logs4}); !errors.Is(err, dataplane.ErrPinnedInUse) {
		t.Errorf("fwd --remove of a live dataplane: %v, want ErrPinnedInUse\n%s", err, logs4.String())
	}
	if err := roundTrip(l, 7000); err != nil {
		t.Errorf("first fwd stopped forwarding after a second one was refused: %v", err)
	}

	// SIGTERM: clean shutdown, nothing attached, socket removed.
	sig <- syscall.SIGTERM
	select {
	case err := <-errc:
		stopped = true
		if err != nil {
			t.Errorf("fwd stopped with %v\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("fwd did not stop on SIGTERM:\n%s", logs.String())
	}
	if got := xdpAttached(t, l); len(got) > 0 {
		t.Errorf("XDP still attached after shutdown on %v", got)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after shutdown: %v", err)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after shutdown without --keep-dataplane: %v", err)
	}
	_, errOut, code = fwctl(t, "--socket", sock, "show", "system", "buffers")
	if code != 1 || !strings.Contains(errOut, "no daemon listening on "+sock) {
		t.Errorf("fwctl without daemon: exit %d, stderr %q", code, errOut)
	}
}

func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: HTTP %d, %v", resp.StatusCode, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse metrics: %v\n%s", err, body)
	}
	return fams
}

// sample returns the value of the first sample of family whose labels
// include want.
func sample(fams map[string]*dto.MetricFamily, family string, want map[string]string) (float64, bool) {
	f, ok := fams[family]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestIntegrationDaemonExec runs the built binary as an operator would:
// real signals, the dataplane in another namespace via --netns.
func TestIntegrationDaemonExec(t *testing.T) {
	l := newLab(t, 7000)
	dir := t.TempDir()
	bin := filepath.Join(dir, "fwd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "fw.json")
	sock := filepath.Join(dir, "fwd.sock")
	writeConfig(t, cfgPath, labConfig(l, 7000))

	var logs syncBuffer
	cmd := exec.Command(bin, "--config", cfgPath, "--netns", l.Firewall.Path, "--socket", sock, "--metrics", "", "--pin-dir", netlab.PinDir(t))
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})
	c := control.NewClient(sock, &control.ClientOptions{Timeout: 2 * time.Second})
	defer c.Close()
	waitFor(t, "fwd to answer on its socket", 30*time.Second, func() bool {
		_, err := c.Capability(context.Background())
		return err == nil
	})
	if err := roundTrip(l, 7000); err != nil {
		t.Errorf("allowed flow through the exec'd daemon: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload in the log", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), `msg="config applied"`)
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("fwd exit: %v\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("fwd did not exit on SIGTERM:\n%s", logs.String())
	}
	if got := xdpAttached(t, l); len(got) > 0 {
		t.Errorf("XDP still attached after exit on %v", got)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after exit: %v", err)
	}
	if !strings.Contains(logs.String(), "stopped: dataplane closed") {
		t.Errorf("no clean-stop line in the log:\n%s", logs.String())
	}
}
