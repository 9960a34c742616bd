package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
)

// startDaemon runs fwd in-process on the lab's firewall namespace and
// returns what it serves; the daemon stops at cleanup.
func startDaemon(t *testing.T, l *netlab.Lab, cfg *dataplane.Config, extra ...string) (readyInfo, *syncBuffer) {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "fw.json")
	writeConfig(t, cfgPath, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	readyc := make(chan readyInfo, 1)
	errc := make(chan error, 1)
	args := append([]string{"--config", cfgPath, "--netns", l.Firewall.Path, "--socket", filepath.Join(dir, "fwd.sock"), "--metrics", "127.0.0.1:0", "--pin-dir", netlab.PinDir(t)}, extra...)
	go func() {
		errc <- run(ctx, args, &env{stderr: logs, signals: make(chan os.Signal), ready: func(ri readyInfo) { readyc <- ri }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("fwd stopped with %v\n%s", err, logs.String())
		}
	})
	select {
	case ri := <-readyc:
		return ri, logs
	case err := <-errc:
		errc <- err
		t.Fatalf("fwd exited: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("fwd not ready after 30s:\n%s", logs.String())
	}
	return readyInfo{}, nil
}

// freePort returns a loopback TCP port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestIntegrationPrometheusAlert runs the distribution's Prometheus server
// (loopback port, its own data directory) scraping fwd in a lab with the
// shipped alert rules, fills the session table to 82-89 % with real flows, and
// checks through Prometheus's HTTP API that the warning alert fires for the
// session table and nothing fires for the tables that are not full. The
// rules are the shipped ones except their `for:` holds, shortened to 3 s
// so the test takes seconds, not minutes; promtool's unit tests cover the
// holds.
func TestIntegrationPrometheusAlert(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("FWPLANE_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("prometheus not installed (Debian package prometheus; .ci/run installs it): %v", err)
		}
		t.Skipf("prometheus not installed (apt-get install prometheus): %v", err)
	}
	const port, capacity = 7000, 1000
	l := newLab(t, port)
	cfg := labConfig(l, port)
	cfg.Tables.Sessions = capacity
	cfg.Timeouts.UDP = dataplane.Duration(10 * time.Minute)
	cfg.Timeouts.UDPUnreplied = dataplane.Duration(10 * time.Minute)
	ri, logs := startDaemon(t, l, cfg, "--history-interval", "200ms")

	// Prometheus: the shipped rules with short holds, a 1 s scrape.
	dir := t.TempDir()
	rules, err := os.ReadFile("../prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	short := regexp.MustCompile(`(?m)^(\s+for:) \S+$`).ReplaceAll(rules, []byte("$1 3s"))
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), short, 0o644); err != nil {
		t.Fatal(err)
	}
	promCfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: fwplane
    static_configs:
      - targets: [%q]
`, filepath.Join(dir, "rules.yml"), ri.metrics)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(promCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var promLog syncBuffer
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &promLog, &promLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	api := func(path string, out any) error {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return json.NewDecoder(resp.Body).Decode(out)
	}
	type alert struct {
		Labels map[string]string `json:"labels"`
		State  string            `json:"state"`
	}
	var alerts struct {
		Data struct {
			Alerts []alert `json:"alerts"`
		} `json:"data"`
	}
	waitFor(t, "Prometheus to scrape fwd", 30*time.Second, func() bool {
		var r struct {
			Data struct {
				ActiveTargets []struct {
					Health string `json:"health"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		return api("/api/v1/targets", &r) == nil && len(r.Data.ActiveTargets) == 1 && r.Data.ActiveTargets[0].Health == "up"
	})
	// Resource alerts only: with its hold shortened to 3 s,
	// FwplaneScrapeAbsent fires during Prometheus's own first seconds.
	resourceAlerts := func() []alert {
		var out []alert
		for _, a := range alerts.Data.Alerts {
			if strings.HasPrefix(a.Labels["alertname"], "FwplaneResource") || a.Labels["alertname"] == "FwplaneDropsRising" {
				out = append(out, a)
			}
		}
		return out
	}
	if err := api("/api/v1/alerts", &alerts); err != nil {
		t.Fatal(err)
	}
	if a := resourceAlerts(); len(a) != 0 {
		t.Fatalf("alerts before the table fills: %+v", a)
	}

	// Fill the session table to 82-89 %: one flow per source port, until
	// the kernel's count says so. (The LRU map may evict before it is
	// full, so the number of flows is not the number of sessions.)
	used := func() uint64 {
		rep, err := ri.dp.ResourceStats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		row, _ := rep.Find("fw_sessions_v4", "global")
		if row.Used == nil || row.Capacity != capacity {
			t.Fatalf("fw_sessions_v4 = %+v, want a count of a %d-entry table", row, capacity)
		}
		return *row.Used
	}
	n := 0
	for ; n < 3*capacity && used() < capacity*82/100; n++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := netlab.UDPRoundTrip(ctx, l.Client, netip.AddrPortFrom(l.ClientAddr4, uint16(30000+n)), netip.AddrPortFrom(l.ServerAddr4, port), []byte("x"))
		cancel()
		if err != nil {
			t.Fatalf("flow %d: %v", n, err)
		}
	}
	if u := used(); u < capacity*80/100 || u >= capacity*90/100 {
		t.Fatalf("fw_sessions_v4 holds %d of %d after %d flows, want 80-89 %%", u, capacity, n)
	}
	t.Logf("%d flows made %d sessions of %d", n, used(), capacity)

	var firing []alert
	waitFor(t, "the warning alert to fire", 60*time.Second, func() bool {
		if api("/api/v1/alerts", &alerts) != nil {
			return false
		}
		firing = firing[:0]
		for _, a := range resourceAlerts() {
			if a.State == "firing" {
				firing = append(firing, a)
			}
		}
		for _, a := range firing {
			if a.Labels["alertname"] == "FwplaneResourceWarning" && a.Labels["resource"] == "fw_sessions_v4" {
				return true
			}
		}
		return false
	})
	// Only the session table alerts: the warning, and (it filled in
	// seconds) possibly the prediction; never critical below 90 %.
	for _, a := range firing {
		n := a.Labels["alertname"]
		if a.Labels["resource"] != "fw_sessions_v4" || (n != "FwplaneResourceWarning" && n != "FwplaneResourceFullSoon") {
			t.Errorf("unexpected firing alert %v", a.Labels)
		}
	}
	// The daemon logged the threshold event once, and counts it.
	waitFor(t, "the threshold event in the log", 10*time.Second, func() bool {
		return strings.Count(logs.String(), `msg="resource entered WARNING" resource=fw_sessions_v4`) == 1
	})
	fams := scrape(t, ri.metrics)
	if v, ok := sample(fams, "fwplane_threshold_events_total", map[string]string{"resource": "fw_sessions_v4", "level": "warning"}); !ok || v != 1 {
		t.Errorf("fwplane_threshold_events_total{fw_sessions_v4,warning} = %v (found %v), want 1", v, ok)
	}
	if t.Failed() {
		t.Logf("prometheus log:\n%s", promLog.String())
	}
}
