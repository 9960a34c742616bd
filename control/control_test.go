package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/diagnose"
	"github.com/fwplane/fwplane/history"
)

// fakeDP is a dataplane.DataPlane that returns canned reports; the
// protocol, not the dataplane, is under test here.
type fakeDP struct {
	report dataplane.ResourceReport
	err    error
}

func (f *fakeDP) Mode() dataplane.Mode { return f.report.Mode }
func (f *fakeDP) Apply(context.Context, *dataplane.Config) (dataplane.ApplyResult, error) {
	return dataplane.ApplyResult{}, errors.New("not used")
}
func (f *fakeDP) ResourceStats(context.Context) (dataplane.ResourceReport, error) {
	return f.report, f.err
}
func (f *fakeDP) Close() error { return nil }

type listingDP struct {
	fakeDP
	sessions []dataplane.Session
}

func (l *listingDP) Sessions(_ context.Context, limit int) ([]dataplane.Session, dataplane.SessionCounts, error) {
	n := uint64(len(l.sessions))
	return l.sessions[:min(limit, len(l.sessions))], dataplane.SessionCounts{IPv4: n, Total: n}, nil
}

var sampleReport = dataplane.ResourceReport{
	Mode:       dataplane.ModeEBPF,
	Generation: 3,
	Taken:      time.Date(2026, 5, 17, 10, 0, 0, 0, time.UTC),
	Took:       1500 * time.Microsecond,
	Resources: []dataplane.Resource{
		{Name: "fw_sessions_v4", Kind: dataplane.KindLRUHash, Scope: "global", Capacity: 1024, Used: dataplane.Uint64(900), Method: dataplane.MethodKfunc, KeySize: 16, ValueSize: 48},
		{Name: "fw_policy", Kind: dataplane.KindArray, Scope: "global", Capacity: 64},
		{Name: "fw_broken", Kind: dataplane.KindHash, Scope: "global", Capacity: 8, Error: "count failed: EPERM"},
	},
	Counters: []dataplane.Counter{{Name: "dropped_policy", Scope: "global", Value: 7}},
	Sessions: &dataplane.SessionCounts{IPv4: 900, Total: 900},
}

func serve(t *testing.T, s *Service) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "fwd.sock")
	srv, err := Serve(path, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close server: %v", err)
		}
	})
	c := NewClient(path, &ClientOptions{Timeout: 5 * time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestResourcesRoundTrip(t *testing.T) {
	c := serve(t, &Service{DataPlane: &fakeDP{report: sampleReport}})
	got, err := c.Resources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sampleReport, got); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
}

func TestErrorsKeepTheirMeaning(t *testing.T) {
	nse := &dataplane.NotSupportedError{What: "read resources", Reasons: []string{"a", "b"}}
	cfgErr := &dataplane.ConfigError{Problems: []dataplane.Problem{{Field: "zones", Message: "required"}, {Field: "interfaces[0].zone", Message: "unknown zone"}}}
	tests := []struct {
		name     string
		svc      *Service
		call     func(*Client) error
		sentinel error
		want     ErrorReply
		status   int
	}{
		{
			name:     "resources not supported",
			svc:      &Service{DataPlane: &fakeDP{err: nse}},
			call:     func(c *Client) error { _, err := c.Resources(context.Background()); return err },
			sentinel: dataplane.ErrNotSupported, status: http.StatusNotImplemented,
			want: ErrorReply{Code: CodeNotSupported, Message: "read resources: " + nse.Error(), Reasons: []string{"a", "b"}},
		},
		{
			name:     "resources after close",
			svc:      &Service{DataPlane: &fakeDP{err: dataplane.ErrClosed}},
			call:     func(c *Client) error { _, err := c.Resources(context.Background()); return err },
			sentinel: dataplane.ErrClosed, status: http.StatusServiceUnavailable,
			want: ErrorReply{Code: CodeClosed, Message: "read resources: dataplane closed"},
		},
		{
			name:     "sessions without a lister",
			svc:      &Service{DataPlane: &fakeDP{report: sampleReport}},
			call:     func(c *Client) error { _, err := c.Sessions(context.Background(), 0); return err },
			sentinel: dataplane.ErrNotSupported, status: http.StatusNotImplemented,
			want: ErrorReply{Code: CodeNotSupported,
				Message: "list sessions: not supported: the ebpf backend cannot enumerate sessions (counts are in /v1/resources)",
				Reasons: []string{"the ebpf backend cannot enumerate sessions (counts are in /v1/resources)"}},
		},
		{
			name: "reload refused with every problem",
			svc: &Service{DataPlane: &fakeDP{}, Reload: func(context.Context) (dataplane.ApplyResult, error) {
				return dataplane.ApplyResult{}, cfgErr
			}},
			call:     func(c *Client) error { _, err := c.Reload(context.Background()); return err },
			sentinel: dataplane.ErrInvalidConfig, status: http.StatusUnprocessableEntity,
			want: ErrorReply{Code: CodeInvalidConfig, Message: "reload: " + cfgErr.Error(), Problems: cfgErr.Problems},
		},
		{
			name:     "reload without a source",
			svc:      &Service{DataPlane: &fakeDP{}},
			call:     func(c *Client) error { _, err := c.Reload(context.Background()); return err },
			sentinel: dataplane.ErrNotSupported, status: http.StatusNotImplemented,
			want: ErrorReply{Code: CodeNotSupported, Message: "reload: not supported: this server has no config source to re-read",
				Reasons: []string{"this server has no config source to re-read"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(serve(t, tt.svc))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T), want *Error", err, err)
			}
			if !errors.Is(err, tt.sentinel) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.sentinel)
			}
			if e.Status != tt.status {
				t.Errorf("status %d, want %d", e.Status, tt.status)
			}
			if diff := cmp.Diff(tt.want, e.ErrorReply); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSessionsListingIsBounded(t *testing.T) {
	dp := &listingDP{fakeDP: fakeDP{report: sampleReport}}
	for i := range 5 {
		dp.sessions = append(dp.sessions, dataplane.Session{Protocol: "udp", Source: "10.0.0.2:" + string(rune('1'+i)), Destination: "10.0.1.2:53", Packets: 2})
	}
	c := serve(t, &Service{DataPlane: dp})
	got, err := c.Sessions(context.Background(), 3)
	if err != nil {
		t.Fatal(err)
	}
	want := SessionsReply{Counts: dataplane.SessionCounts{IPv4: 5, Total: 5}, Limit: 3, Sessions: dp.sessions[:3], Truncated: true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sessions (-want +got):\n%s", diff)
	}
	_, err = c.Sessions(context.Background(), MaxSessionLimit+1)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeBadRequest || e.Status != http.StatusBadRequest {
		t.Errorf("limit over max: %v, want bad_request", err)
	}
}

func TestCapability(t *testing.T) {
	d := capability.Decision{Mode: dataplane.ModeEBPF, Request: capability.Request{Preference: capability.PreferAuto},
		Features: []dataplane.Feature{dataplane.FeatureIPv4Forwarding},
		Verdicts: []capability.Verdict{{Mode: dataplane.ModeEBPF, Supported: true, Considered: true},
			{Mode: dataplane.ModeUserspace, Considered: true, Reasons: []string{"backend unavailable"}}}}
	c := serve(t, &Service{DataPlane: &fakeDP{report: sampleReport}, Decision: func() capability.Decision { return d }})
	got, err := c.Capability(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := CapabilityReply{Mode: dataplane.ModeEBPF, Explanation: d.Explain(), Decision: d}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("capability (-want +got):\n%s", diff)
	}
}

func TestWrongMethodAndPath(t *testing.T) {
	svc := &Service{DataPlane: &fakeDP{report: sampleReport}}
	path := filepath.Join(t.TempDir(), "fwd.sock")
	srv, err := Serve(path, svc)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := NewClient(path, nil)
	tests := []struct {
		method, path string
		want         int
		code         string
	}{
		{http.MethodPost, PathResources, http.StatusMethodNotAllowed, CodeMethodNotAllowed},
		{http.MethodGet, PathReload, http.StatusMethodNotAllowed, CodeMethodNotAllowed},
		{http.MethodGet, "/v2/resources", http.StatusNotFound, CodeNotFound},
	}
	for _, tt := range tests {
		err := c.do(context.Background(), tt.method, tt.path, nil, new(any))
		var e *Error
		if !errors.As(err, &e) || e.Status != tt.want || e.Code != tt.code {
			t.Errorf("%s %s: %v, want %d %s", tt.method, tt.path, err, tt.want, tt.code)
		}
	}
}

func TestListenPermissionsStaleAndInUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "newdir")
	path := filepath.Join(dir, "fwd.sock")

	// A stale socket: bound by a listener that went away without
	// removing it.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	os.Remove(dir) // fails (not empty): keeps the stale socket in place

	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("socket directory holds %d entries, want only the socket (no temporary name left)", len(entries))
	}
	if _, err := Listen(path); !errors.Is(err, ErrInUse) {
		t.Errorf("second Listen = %v, want ErrInUse", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	// A directory Listen creates is owner-only.
	fresh := filepath.Join(t.TempDir(), "a", "b", "fwd.sock")
	ln2, err := Listen(fresh)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	di, err := os.Stat(filepath.Dir(fresh))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %v, want 0700", di.Mode().Perm())
	}

	// Never delete what is not a socket.
	file := filepath.Join(t.TempDir(), "notasocket")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file = %v, want a refusal", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("regular file removed: %v", err)
	}
}

func TestClientWithoutDaemon(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fwd.sock")
	_, err := NewClient(path, nil).Resources(context.Background())
	if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), path) {
		t.Errorf("Resources without a daemon = %v, want ErrNotRunning naming %s", err, path)
	}
	var nilSrv *Server
	if err := nilSrv.Close(); err != nil {
		t.Errorf("nil Server Close = %v", err)
	}
}

// rawRequest writes one HTTP/1.1 request on c and reads the reply.
func rawRequest(t *testing.T, c net.Conn, br *bufio.Reader, method, path, body string) *http.Response {
	t.Helper()
	req := method + " " + path + " HTTP/1.1\r\nHost: fwd\r\n"
	if body != "" {
		req += "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n"
	}
	req += "\r\n" + body
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestIdleKeepAliveConnectionIsClosed(t *testing.T) {
	const idle = 300 * time.Millisecond
	path := filepath.Join(t.TempDir(), "fwd.sock")
	srv, err := Serve(path, &Service{DataPlane: &fakeDP{report: sampleReport}, IdleTimeout: idle})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	// Two requests on one connection: it is kept alive between them.
	for range 2 {
		if resp := rawRequest(t, c, br, http.MethodGet, PathResources, ""); resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("status %d, close %v: want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
		}
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := br.ReadByte()
	took := time.Since(start)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: read %v, %v; want EOF (closed by the server)", n, err)
	}
	if took < idle/2 {
		t.Errorf("closed after %v, before the idle timeout %v", took, idle)
	}
	if open, _ := srv.Conns(); open != 0 {
		waitUntil(t, "the closed connection to be released", func() bool { o, _ := srv.Conns(); return o == 0 })
	}
}

func TestConnectionCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fwd.sock")
	srv, err := Serve(path, &Service{DataPlane: &fakeDP{report: sampleReport}, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
		if resp := rawRequest(t, c, bufio.NewReader(c), http.MethodGet, PathCapability, ""); resp.StatusCode != http.StatusNotImplemented {
			t.Fatalf("status %d, want 501 (no decision)", resp.StatusCode)
		}
	}
	// Both are idle keep-alive connections now; a third is refused.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /v1/resources HTTP/1.1\r\nHost: fwd\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("over the cap: %v, want a 503 reply", err)
	}
	var rep ErrorReply
	json.NewDecoder(resp.Body).Decode(&rep)
	resp.Body.Close()
	c.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || rep.Code != CodeBusy || !strings.Contains(rep.Message, "at most 2") {
		t.Errorf("over the cap: %d %+v, want 503 busy naming the cap", resp.StatusCode, rep)
	}
	if _, refused := srv.Conns(); refused != 1 {
		t.Errorf("refused %d, want 1", refused)
	}
	// The client's view: a *Error with code busy.
	cl := NewClient(path, &ClientOptions{Timeout: 5 * time.Second})
	defer cl.Close()
	var e *Error
	if _, err := cl.Resources(context.Background()); !errors.As(err, &e) || e.Code != CodeBusy {
		t.Errorf("client over the cap: %v, want a busy *Error", err)
	}
	// A slot frees when a connection closes.
	held[0].Close()
	waitUntil(t, "a request to succeed after a connection closed", func() bool {
		_, err := cl.Resources(context.Background())
		return err == nil
	})
}

func TestReloadWithBodyRefused(t *testing.T) {
	calls := 0
	path := filepath.Join(t.TempDir(), "fwd.sock")
	srv, err := Serve(path, &Service{DataPlane: &fakeDP{}, Reload: func(context.Context) (dataplane.ApplyResult, error) {
		calls++
		return dataplane.ApplyResult{Generation: 2}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	resp := rawRequest(t, c, br, http.MethodPost, PathReload, `{"interfaces":[]}`)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("reload with a body: status %d, want 400", resp.StatusCode)
	}
	if calls != 0 {
		t.Fatalf("reload with a body ran Reload %d times", calls)
	}
	// The reply says why (read through the client to decode it).
	cl := NewClient(path, nil)
	defer cl.Close()
	var out any
	err = cl.doBody(context.Background(), http.MethodPost, PathReload, strings.NewReader("{}"), &out)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeBadRequest || !strings.Contains(e.Message, "reload takes no body") {
		t.Errorf("reload with a body: %v, want bad_request saying reload takes no body", err)
	}
	if resp := rawRequest(t, c, br, http.MethodPost, PathReload, ""); resp.StatusCode != http.StatusOK || calls != 1 {
		t.Errorf("reload without a body: status %d, calls %d; want 200 and one call", resp.StatusCode, calls)
	}
}

func TestReloadWhoseClientLeftDoesNotRun(t *testing.T) {
	release := make(chan struct{})
	started := make(chan int, 4)
	var calls atomic.Int32
	var logs syncBuffer
	path := filepath.Join(t.TempDir(), "fwd.sock")
	srv, err := Serve(path, &Service{DataPlane: &fakeDP{}, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Reload: func(ctx context.Context) (dataplane.ApplyResult, error) {
		n := int(calls.Add(1))
		started <- n
		if n == 1 {
			<-release
		}
		return dataplane.ApplyResult{Generation: uint64(n + 1)}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cl := NewClient(path, nil)
	defer cl.Close()
	first := make(chan error, 1)
	go func() { _, err := cl.Reload(context.Background()); first <- err }()
	<-started // the first reload holds the turn

	// The second client gives up while waiting.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = cl.Reload(ctx)
	cancel()
	if err == nil {
		t.Fatal("second reload returned while the first held the turn")
	}
	// The server notices the client left (its read sees the close) a
	// moment later, and says so.
	waitUntil(t, "the server to drop the abandoned reload", func() bool {
		return strings.Contains(logs.String(), "reload not run")
	})
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first reload: %v", err)
	}
	// A third reload runs (so the server works) and is the second call:
	// the abandoned one never ran.
	res, err := cl.Reload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := calls.Load(); got != 2 || res.Generation != 3 {
		t.Errorf("Reload ran %d times (generation %d), want 2 (the abandoned request must not run)", got, res.Generation)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHistoryEventsAndDiagnoseEndpoints(t *testing.T) {
	rec := history.New(nil, nil)
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	for i := range 70 {
		rec.Record(&dataplane.ResourceReport{Resources: []dataplane.Resource{
			{Name: "fw_sessions_v4", Scope: "global", Capacity: 1024, Used: dataplane.Uint64(uint64(800 + 2*i))}}}, t0.Add(time.Duration(i)*time.Second))
	}
	called := time.Duration(0)
	c := serve(t, &Service{DataPlane: &fakeDP{report: sampleReport}, History: rec,
		Diagnose: func(_ context.Context, w time.Duration) (diagnose.Report, error) {
			called = w
			return diagnose.Report{Mode: dataplane.ModeEBPF, Window: w, Checks: []diagnose.Check{{ID: "tx", Verdict: diagnose.Failing}}, Failing: 1}, nil
		}})
	ctx := context.Background()
	b, err := c.Buffers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Trends) != 1 || b.Trends[0].Estimate != history.EstimateRising || len(b.Resources) != len(sampleReport.Resources) {
		t.Errorf("buffers: %d rows, trends %+v; want the report and one rising trend", len(b.Resources), b.Trends)
	}
	h, err := c.History(ctx, "fw_sessions_v4", "", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if h.Series == nil || len(h.Series.Points) != 30 || h.Series.Capacity != 1024 {
		t.Errorf("history: %+v, want 30 points of capacity 1024", h.Series)
	}
	var e *Error
	if _, err := c.History(ctx, "nope", "", 0); !errors.As(err, &e) || e.Code != CodeNotFound {
		t.Errorf("history of an unknown row: %v, want not_found", err)
	}
	rows, err := c.HistoryRows(ctx)
	if err != nil || len(rows.Rows) != 1 || rows.Stats.Rows != 1 {
		t.Errorf("history rows: %+v, %v", rows, err)
	}
	ev, err := c.Events(ctx)
	if err != nil || len(ev.Events) != 2 || ev.Events[0].To != dataplane.LevelWarning || ev.Events[1].To != dataplane.LevelCritical || len(ev.Counts) != 2 {
		t.Errorf("events: %+v, %v; want WARNING then CRITICAL", ev, err)
	}
	d, err := c.Diagnose(ctx, 500*time.Millisecond)
	if err != nil || !d.Failed() || called != 500*time.Millisecond {
		t.Errorf("diagnose: %+v, %v (window %v)", d, err, called)
	}
	if _, err := c.Diagnose(ctx, time.Hour); !errors.As(err, &e) || e.Code != CodeBadRequest {
		t.Errorf("diagnose over an hour: %v, want bad_request", err)
	}
	// Without a history or checks: not supported, and no trends.
	c2 := serve(t, &Service{DataPlane: &fakeDP{report: sampleReport}})
	if b, err := c2.Buffers(ctx); err != nil || b.Trends != nil {
		t.Errorf("buffers without history: trends %v, %v", b.Trends, err)
	}
	for name, call := range map[string]func() error{
		"events":   func() error { _, err := c2.Events(ctx); return err },
		"history":  func() error { _, err := c2.History(ctx, "x", "", 0); return err },
		"diagnose": func() error { _, err := c2.Diagnose(ctx, 0); return err },
	} {
		if err := call(); !errors.Is(err, dataplane.ErrNotSupported) {
			t.Errorf("%s without support: %v, want not_supported", name, err)
		}
	}
}
