package ctl

import (
	"bytes"
	"context"
	"errors"
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
