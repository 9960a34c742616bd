package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/control"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/examples/internal/ctl"
	"github.com/fwplane/fwplane/internal/testutil"
)

// netnsGone checks that none of the lab's namespaces is left.
func netnsGone(t *testing.T, names []string) {
	t.Helper()
	if len(names) == 0 {
		t.Fatal("summary names no namespaces")
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/var/run/netns", n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s left behind (%v)", n, err)
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestIntegrationLab(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	var out, log lockedBuffer
	sum, err := run(context.Background(), options{backend: capability.PreferAuto, flows: 8, duration: 300 * time.Millisecond, json: true, out: &out, log: &log})
	if err != nil {
		t.Fatalf("run: %v\n%s", err, log.String())
	}
	if !sum.Verdict.Pass {
		t.Errorf("verdict %+v\nallowed %+v\ndenied %+v\n%s", sum.Verdict, sum.Allowed, sum.Denied, log.String())
	}
	var decoded Summary
	if err := json.Unmarshal([]byte(out.String()), &decoded); err != nil {
		t.Fatalf("--json output does not decode: %v\n%s", err, out.String())
	}
	if decoded.Sessions.Seen == nil || *decoded.Sessions.Seen != 9 || decoded.Allowed.OK != 8 || decoded.Denied.OK != 4 {
		t.Errorf("summary: sessions %v, allowed %+v, denied %+v; want 9 sessions, 8 allowed, 4 blocked",
			decoded.Sessions.Seen, decoded.Allowed, decoded.Denied)
	}
	if decoded.Flood.Sent == 0 || decoded.Flood.Received == 0 || decoded.Flood.Received > decoded.Flood.Sent {
		t.Errorf("flood %+v: want frames sent and some (no more than sent) received", decoded.Flood)
	}
	if len(decoded.Report.Resources) == 0 || decoded.Report.Mode != sum.Backend {
		t.Errorf("report missing or of the wrong mode: %+v", decoded.Report)
	}
	if !strings.Contains(decoded.Mirroring, "mirrored") {
		t.Errorf("mirroring not explained or not configured: %q", decoded.Mirroring)
	}
	// Both backends mirror: the flood's clones reached the sink, and no
	// more of them than the dataplane says it made.
	if m := decoded.Mirror; m == nil || m.AtSink == 0 || m.AtSink > m.Mirrored || m.Mirrored > m.Selected {
		t.Errorf("mirror result %+v: want clones at the sink, at most the mirrored ones, at most the selected ones", m)
	}
	netnsGone(t, sum.Namespaces)
}

// TestIntegrationLabVethDefaults runs the lab on veths with the kernel's
// defaults: the eBPF backend (TC mode there) must pass; any other backend
// chosen may fail, but then the lab must say what the kernel counted on
// the path. It removes everything.
func TestIntegrationLabVethDefaults(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	var out, log lockedBuffer
	sum, err := run(context.Background(), options{backend: capability.PreferAuto, flows: 4, duration: 200 * time.Millisecond,
		vethDefaults: true, out: &out, log: &log})
	if err != nil {
		t.Fatalf("run: %v\n%s", err, log.String())
	}
	if !strings.HasPrefix(sum.Veths, "kernel defaults") || !strings.Contains(log.String(), "veths: kernel defaults") {
		t.Errorf("veths %q; log:\n%s", sum.Veths, log.String())
	}
	// The eBPF backend forwards there in TC mode: it must pass.
	if sum.Backend == dataplane.ModeEBPF && !sum.Verdict.Pass {
		t.Errorf("eBPF backend on kernel-default veths: verdict %+v\n%s\n%s", sum.Verdict, log.String(), out.String())
	}
	if !sum.Verdict.Pass {
		for _, want := range []string{"FAIL (", "What the kernel counted", "firewall -> client veth:", "firewall -> server veth:", "checksum errors:"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("failed verdict does not say %q:\n%s", want, out.String())
			}
		}
	}
	t.Logf("%s backend on kernel-default veths: pass %v\n%s", sum.Backend, sum.Verdict.Pass, out.String())
	netnsGone(t, sum.Namespaces)
}

// TestIntegrationLabUserspace runs the lab on the userspace backend,
// mirroring included.
func TestIntegrationLabUserspace(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	var out, log lockedBuffer
	sum, err := run(context.Background(), options{backend: capability.PreferUserspace, flows: 4, duration: 300 * time.Millisecond, out: &out, log: &log})
	if err != nil {
		t.Fatalf("run: %v\n%s", err, log.String())
	}
	if !sum.Verdict.Pass || sum.Backend != dataplane.ModeUserspace {
		t.Errorf("backend %s, verdict %+v\n%s\n%s", sum.Backend, sum.Verdict, log.String(), out.String())
	}
	if sum.Mirror == nil || sum.Mirror.AtSink == 0 {
		t.Errorf("no clones of the flood at the sink: %+v", sum.Mirror)
	}
	if !strings.Contains(out.String(), "flood mirrored:") {
		t.Errorf("verdict does not show mirroring:\n%s", out.String())
	}
	netnsGone(t, sum.Namespaces)
}

// TestIntegrationLabHold serves the control socket while holding, runs
// fwctl against it, then interrupts and checks that everything is gone.
func TestIntegrationLabHold(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	sock := filepath.Join(t.TempDir(), "lab.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, log lockedBuffer
	type result struct {
		sum Summary
		err error
	}
	done := make(chan result, 1)
	held := make(chan string, 1)
	go func() {
		s, err := run(ctx, options{backend: capability.PreferAuto, flows: 4, duration: 100 * time.Millisecond, hold: true,
			socket: sock, out: &out, log: &log, held: func(p string) { held <- p }})
		done <- result{s, err}
	}()
	select {
	case p := <-held:
		if p != sock {
			t.Errorf("held on %s, want %s", p, sock)
		}
	case r := <-done:
		t.Fatalf("run returned before holding: %v\n%s", r.err, log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("lab not holding after 60s:\n%s", log.String())
	}
	if !strings.Contains(out.String(), "PASS") {
		t.Errorf("no PASS verdict before holding:\n%s", out.String())
	}
	var o, e bytes.Buffer
	if code := ctl.Run(ctx, []string{"--socket", sock, "show", "system", "buffers"}, &o, &e); code != 0 {
		t.Fatalf("fwctl against the held lab: exit %d: %s", code, e.String())
	}
	if !strings.Contains(o.String(), "Active sessions: IPv4 3, IPv6 2, total 5") {
		t.Errorf("fwctl show system buffers against the lab:\n%s", o.String())
	}
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("lab did not stop after interrupt")
	}
	if r.err != nil {
		t.Errorf("run: %v", r.err)
	}
	netnsGone(t, r.sum.Namespaces)
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left: %v", err)
	}
	if _, err := control.NewClient(sock, nil).Resources(context.Background()); !errors.Is(err, control.ErrNotRunning) {
		t.Errorf("after interrupt: %v, want ErrNotRunning", err)
	}
}
