package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/control"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/diagnose"
	"github.com/fwplane/fwplane/history"
)

// fakeDP serves a canned report and listing; the CLI, not a backend, is
// under test.
type fakeDP struct{ report dataplane.ResourceReport }

func (f *fakeDP) Mode() dataplane.Mode { return f.report.Mode }
func (f *fakeDP) Apply(context.Context, *dataplane.Config) (dataplane.ApplyResult, error) {
	return dataplane.ApplyResult{}, errors.New("unused")
}
func (f *fakeDP) ResourceStats(context.Context) (dataplane.ResourceReport, error) {
	return f.report, nil
}
func (f *fakeDP) Close() error { return nil }

type listing struct{ fakeDP }

func (l *listing) Sessions(context.Context, int) ([]dataplane.Session, dataplane.SessionCounts, error) {
	return []dataplane.Session{{Protocol: "udp", Source: "10.0.0.2:5000", Destination: "10.0.1.2:53", Packets: 2, Bytes: 120, IdleSeconds: 1.25}},
		dataplane.SessionCounts{IPv4: 3, Total: 3}, nil
}

func serve(t *testing.T, svc *control.Service) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fwd.sock")
	srv, err := control.Serve(path, svc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return path
}

func TestCommands(t *testing.T) {
	report := dataplane.ResourceReport{
		Mode: dataplane.ModeUserspace, Generation: 2, Took: 250 * time.Microsecond,
		Resources: []dataplane.Resource{
			{Name: "sessions", Kind: dataplane.KindTable, Scope: "global", Capacity: 100, Used: dataplane.Uint64(95)},
			{Name: "umem_frames", Kind: dataplane.KindUMEM, Scope: "eth0/q0", Capacity: 4096, Used: dataplane.Uint64(3300), Detail: true},
		},
		Sessions: &dataplane.SessionCounts{IPv4: 95, Total: 95},
	}
	sock := serve(t, &control.Service{
		DataPlane: &listing{fakeDP{report}},
		Reload: func(context.Context) (dataplane.ApplyResult, error) {
			return dataplane.ApplyResult{}, &dataplane.NotSupportedError{What: "apply config", Reasons: []string{"static routes", "queue selection"}}
		},
	})
	plain := serve(t, &control.Service{DataPlane: &fakeDP{report}})

	tests := []struct {
		name     string
		args     []string
		code     int
		contains []string
	}{
		{"buffers", []string{"--socket", sock, "show", "system", "buffers"}, ExitOK,
			[]string{"sessions  table  global       100    95   95.0%  CRITICAL", "umem_frames  umem  eth0/q0      4096  3300   80.5%  WARNING",
				"2 resources at high utilisation (1 critical, 1 warning; 1 in detail rows).", "Active sessions: IPv4 95, IPv6 0, total 95"}},
		{"buffers detail", []string{"show", "system", "buffers", "detail", "--socket=" + sock}, ExitOK,
			[]string{"eth0/q0", "80.5%  WARNING", "2 resources at high utilisation (1 critical, 1 warning; 1 in detail rows)."}},
		{"buffers json", []string{"--socket", sock, "--json", "show", "system", "buffers"}, ExitOK, []string{`"mode": "userspace"`, `"used": 95`}},
		{"sessions", []string{"--socket", sock, "show", "sessions", "--limit", "1"}, ExitOK,
			[]string{"udp    10.0.0.2:5000  10.0.1.2:53        2    120  1.2s", "Showing 1 of 3 sessions (limit 1)."}},
		{"sessions not supported", []string{"--socket", plain, "show", "sessions"}, ExitError,
			[]string{"show sessions: not supported:\n  the userspace backend cannot enumerate sessions"}},
		{"reload refused", []string{"--socket", sock, "reload"}, ExitError,
			[]string{"reload refused, the running config is unchanged: not supported:\n  static routes\n  queue selection"}},
		{"no daemon", []string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "show", "capability"}, ExitError,
			[]string{"no daemon listening on"}},
		{"unknown command", []string{"show", "routes"}, ExitUsage, []string{`unknown command "show routes"`}},
		{"bad limit", []string{"show", "sessions", "--limit", "0"}, ExitUsage, []string{"--limit \"0\""}},
		{"no command", nil, ExitUsage, []string{"usage: fwctl"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Run(context.Background(), tt.args, &out, &errOut)
			all := out.String() + errOut.String()
			if code != tt.code {
				t.Errorf("exit %d, want %d\n%s", code, tt.code, all)
			}
			for _, c := range tt.contains {
				if !strings.Contains(all, c) {
					t.Errorf("output lacks %q:\n%s", c, all)
				}
			}
		})
	}
}

func TestParse(t *testing.T) {
	got, err := parse([]string{"show", "--socket=/x.sock", "sessions", "--limit=5", "--json"})
	if err != nil {
		t.Fatal(err)
	}
	want := args{socket: "/x.sock", json: true, limit: 5, words: []string{"show", "sessions"}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(args{})); diff != "" {
		t.Errorf("parse (-want +got):\n%s", diff)
	}
}

func TestParseThresholds(t *testing.T) {
	got, err := parse([]string{"show", "system", "buffers", "--warning", "50", "--critical=75"})
	if err != nil {
		t.Fatal(err)
	}
	if want := (dataplane.Thresholds{Warning: 50, Critical: 75}); got.thresholds != want {
		t.Errorf("thresholds = %+v, want %+v", got.thresholds, want)
	}
	for _, bad := range [][]string{{"--warning", "0"}, {"--critical", "101"}, {"--warning", "x"}, {"--warning", "95"}, {"--warning", "60", "--critical", "50"}} {
		if _, err := parse(bad); err == nil {
			t.Errorf("parse(%q) accepted", bad)
		}
	}
}

func TestHistoryEventsDiagnoseCommands(t *testing.T) {
	rec := history.New(nil, nil)
	start := time.Now().Add(-2 * time.Minute)
	for i := range 120 {
		rec.Record(&dataplane.ResourceReport{Resources: []dataplane.Resource{
			{Name: "sessions", Scope: "global", Capacity: 1000, Used: dataplane.Uint64(uint64(700 + 2*i))}}}, start.Add(time.Duration(i)*time.Second))
	}
	report := dataplane.ResourceReport{Mode: dataplane.ModeEBPF, Resources: []dataplane.Resource{
		{Name: "sessions", Kind: dataplane.KindLRUHash, Scope: "global", Capacity: 1000, Used: dataplane.Uint64(938)}}}
	failing := true
	sock := serve(t, &control.Service{DataPlane: &fakeDP{report}, History: rec,
		Diagnose: func(_ context.Context, w time.Duration) (diagnose.Report, error) {
			r := diagnose.Report{Mode: dataplane.ModeEBPF, Window: w, Checks: []diagnose.Check{
				{ID: "sessions", Question: "Is the session table full or early-dropping?", Verdict: diagnose.OK, Figures: []string{"fw_sessions_v4: 10 of 1000"}}}, OK: 1}
			if failing {
				r.Checks[0].Verdict, r.Checks[0].Next, r.OK, r.Failing = diagnose.Failing, "raise tables.sessions", 0, 1
			}
			return r, nil
		}})
	run := func(args ...string) (string, int) {
		var out, errOut bytes.Buffer
		code := Run(context.Background(), append([]string{"--socket", sock}, args...), &out, &errOut)
		return out.String() + errOut.String(), code
	}
	out, code := run("show", "system", "buffers")
	if code != ExitOK || !strings.Contains(out, "Trend/min  Full in") || !strings.Contains(out, "+120      31s  CRITICAL") {
		t.Errorf("buffers with trends: exit %d\n%s", code, out)
	}
	out, code = run("show", "system", "buffers", "history", "sessions", "--since", "1m")
	if code != ExitOK || !strings.Contains(out, "sessions (global): capacity 1000, last 1m0s") || !strings.Contains(out, "critical 90%") ||
		!strings.Contains(out, "100%") || !strings.Contains(out, "now 938 (93.8%), lowest 820, highest 938") {
		t.Errorf("history chart: exit %d\n%s", code, out)
	}
	out, code = run("show", "system", "buffers", "history")
	if code != ExitOK || !strings.Contains(out, "1 rows kept") {
		t.Errorf("history rows: exit %d\n%s", code, out)
	}
	out, code = run("show", "system", "buffers", "history", "nope")
	if code != ExitError || !strings.Contains(out, "no history for this row") {
		t.Errorf("history of an unknown row: exit %d\n%s", code, out)
	}
	out, code = run("show", "system", "buffers", "events")
	if code != ExitOK || !strings.Contains(out, "sessions  global  OK       WARNING    800      1000   80.0%    1m40s") ||
		!strings.Contains(out, "WARNING  CRITICAL   900      1000   90.0%      50s") {
		t.Errorf("events: exit %d\n%s", code, out)
	}
	out, code = run("diagnose", "--window", "100ms")
	if code != ExitFailing || !strings.Contains(out, "FAILING  sessions  Is the session table full") || !strings.Contains(out, "next: raise tables.sessions") {
		t.Errorf("diagnose failing: exit %d\n%s", code, out)
	}
	failing = false
	out, code = run("diagnose", "--json")
	if code != ExitOK || !strings.Contains(out, `"verdict": "ok"`) {
		t.Errorf("diagnose ok --json: exit %d\n%s", code, out)
	}
}

// TestHistoryJSON decodes `show system buffers --json` and `... history
// NAME --json` with the field names a script relies on (not the Go types,
// so a renamed field fails here) and checks their values against the
// history recorded: a row rising 2 per second to 938 of 1000.
func TestHistoryJSON(t *testing.T) {
	rec := history.New(nil, nil)
	start := time.Now().Add(-2 * time.Minute)
	for i := range 120 {
		rec.Record(&dataplane.ResourceReport{Resources: []dataplane.Resource{
			{Name: "sessions", Scope: "global", Capacity: 1000, Used: dataplane.Uint64(uint64(700 + 2*i))},
			{Name: "neighbors", Scope: "global", Capacity: 512, Used: dataplane.Uint64(40)}}}, start.Add(time.Duration(i)*time.Second))
	}
	report := dataplane.ResourceReport{Mode: dataplane.ModeUserspace, Resources: []dataplane.Resource{
		{Name: "sessions", Kind: dataplane.KindTable, Scope: "global", Capacity: 1000, Used: dataplane.Uint64(938)}}}
	sock := serve(t, &control.Service{DataPlane: &fakeDP{report}, History: rec})
	run := func(args ...string) []byte {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := Run(context.Background(), append([]string{"--socket", sock, "--json"}, args...), &out, &errOut); code != ExitOK {
			t.Fatalf("%q: exit %d: %s", args, code, errOut.String())
		}
		return out.Bytes()
	}
	type trend struct {
		Name             string   `json:"name"`
		Scope            string   `json:"scope"`
		Capacity         uint64   `json:"capacity"`
		Used             uint64   `json:"used"`
		Samples          int      `json:"samples"`
		WindowNS         int64    `json:"window_ns"`
		PerMinute        *float64 `json:"per_minute"`
		PercentPerMinute *float64 `json:"percent_per_minute"`
		R2               *float64 `json:"r2"`
		FullInSeconds    *float64 `json:"full_in_seconds"`
		Estimate         string   `json:"estimate"`
	}
	var buf struct {
		Mode   string  `json:"mode"`
		Trends []trend `json:"trends"`
	}
	if err := json.Unmarshal(run("show", "system", "buffers"), &buf); err != nil {
		t.Fatal(err)
	}
	if buf.Mode != "userspace" || len(buf.Trends) != 2 {
		t.Fatalf("buffers --json: mode %q, %d trends, want userspace and 2: %+v", buf.Mode, len(buf.Trends), buf)
	}
	near := func(p *float64, want float64) bool {
		return p != nil && math.Abs(*p-want) <= 1e-6*math.Max(1, math.Abs(want))
	}
	// Trends are sorted by name: neighbors, then sessions.
	nb, ss := buf.Trends[0], buf.Trends[1]
	if nb.Name != "neighbors" || nb.Estimate != history.EstimateFlat || !near(nb.PerMinute, 0) || nb.FullInSeconds != nil {
		t.Errorf("neighbors trend %+v, want flat at 0/min without a time to full", nb)
	}
	if ss.Name != "sessions" || ss.Scope != "global" || ss.Capacity != 1000 || ss.Used != 938 || ss.Samples != 60 ||
		time.Duration(ss.WindowNS) != 59*time.Second || ss.Estimate != history.EstimateRising {
		t.Errorf("sessions trend %+v, want 938 of 1000 rising over 60 samples in 59 s", ss)
	}
	if !near(ss.PerMinute, 120) || !near(ss.PercentPerMinute, 12) || !near(ss.R2, 1) || !near(ss.FullInSeconds, 31) {
		t.Errorf("sessions trend: per minute %v, %%/min %v, r2 %v, full in %v s; want 120, 12, 1, 31",
			deref(ss.PerMinute), deref(ss.PercentPerMinute), deref(ss.R2), deref(ss.FullInSeconds))
	}

	var hist struct {
		Series struct {
			Name     string `json:"name"`
			Scope    string `json:"scope"`
			Capacity uint64 `json:"capacity"`
			StepNS   int64  `json:"step_ns"`
			Points   []struct {
				Time time.Time `json:"time"`
				Used uint64    `json:"used"`
				Min  uint64    `json:"min"`
				Max  uint64    `json:"max"`
			} `json:"points"`
		} `json:"series"`
		Stats struct {
			Rows          int   `json:"rows"`
			Samples       int   `json:"samples"`
			IntervalNS    int64 `json:"interval_ns"`
			TrendWindowNS int64 `json:"trend_window_ns"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(run("show", "system", "buffers", "history", "sessions", "--since", "30s"), &hist); err != nil {
		t.Fatal(err)
	}
	s := hist.Series
	if s.Name != "sessions" || s.Scope != "global" || s.Capacity != 1000 || time.Duration(s.StepNS) != time.Second {
		t.Errorf("history --json series %+v, want sessions/global, capacity 1000, one point per second", s)
	}
	// --since 30s: the samples after the last one minus 30 s, i.e. the
	// last 30 (i = 90..119), oldest first.
	if len(s.Points) != 30 {
		t.Fatalf("history --since 30s: %d points, want 30", len(s.Points))
	}
	for k, p := range s.Points {
		i := 90 + k
		want := uint64(700 + 2*i)
		if p.Used != want || p.Min != want || p.Max != want || !p.Time.Equal(start.Add(time.Duration(i)*time.Second)) {
			t.Errorf("point %d = %+v, want used/min/max %d at %s", k, p, want, start.Add(time.Duration(i)*time.Second))
			break
		}
	}
	if st := hist.Stats; st.Rows != 2 || st.Samples != 120 || time.Duration(st.IntervalNS) != time.Second || time.Duration(st.TrendWindowNS) != time.Minute {
		t.Errorf("history --json stats %+v, want 2 rows, 120 samples, 1 s interval, 1 min trend window", st)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

type natListing struct{ fakeDP }

func (l *natListing) Sessions(context.Context, int) ([]dataplane.Session, dataplane.SessionCounts, error) {
	return []dataplane.Session{
			{Protocol: "tcp", Source: "10.0.0.2:5000", Destination: "192.0.2.9:443", Packets: 5, Bytes: 900,
				TranslatedSource: "198.51.100.1:1024", TranslatedDestination: "192.0.2.9:443", NATRule: "out"},
			{Protocol: "udp", Source: "10.0.0.3:53", Destination: "10.0.1.2:53", Packets: 1, Bytes: 60},
		},
		dataplane.SessionCounts{IPv4: 2, Total: 2}, nil
}

// TestSessionsTranslated: translated sessions show the tuple they leave
// with and the rule; untranslated ones a dash.
func TestSessionsTranslated(t *testing.T) {
	sock := serve(t, &control.Service{DataPlane: &natListing{fakeDP{dataplane.ResourceReport{Mode: dataplane.ModeUserspace}}}})
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"--socket", sock, "show", "sessions"}, &out, &errOut); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"Translated source", "198.51.100.1:1024  192.0.2.9:443           out", "-                  -                       -"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
