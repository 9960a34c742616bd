package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/diagnose"
	"github.com/fwplane/fwplane/history"
)

// Service is what the control API serves.
type Service struct {
	// DataPlane is the running dataplane. Sessions are listed when it
	// also implements dataplane.SessionLister.
	DataPlane dataplane.DataPlane
	// Decision returns the backend decision to explain; nil answers
	// /v1/capability with not_supported.
	Decision func() capability.Decision
	// Reload re-reads the config source and applies it. Nil answers
	// /v1/reload with not_supported. The server runs one Reload at a
	// time; a request waiting for its turn whose client goes away (or
	// whose Timeout passes) is dropped and never runs. Reload is called
	// with the request's context and should stop when it is done.
	Reload func(ctx context.Context) (dataplane.ApplyResult, error)
	// Timeout bounds one request's work; 0 means 30 s.
	Timeout time.Duration
	// IdleTimeout closes a connection that has sent no request for this
	// long, keep-alive connections included; 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxConns caps the connections open at once; one more is answered
	// 503 with code "busy" and closed. 0 means DefaultMaxConns.
	MaxConns int
	// History, when set, adds trends to /v1/resources and serves
	// /v1/history and /v1/events; nil answers those with not_supported.
	History History
	// Diagnose runs the debugging checklist over a window; nil answers
	// /v1/diagnose with not_supported.
	Diagnose func(ctx context.Context, window time.Duration) (diagnose.Report, error)
	// Logger receives one line per failed request; nil discards.
	Logger *slog.Logger

	reloadOnce sync.Once
	reloadSem  chan struct{}
}

// History is what the server reads from a history.Recorder.
type History interface {
	Trends() []history.Trend
	Series(name, scope string, since time.Duration) (history.Series, error)
	Rows() []history.Series
	Events() []history.Event
	EventCounts() []history.EventCount
	Stats() history.Stats
}

var _ History = (*history.Recorder)(nil)

// Connection limits of a Server (see Service).
const (
	DefaultIdleTimeout = 30 * time.Second
	DefaultMaxConns    = 64
	// headerTimeout closes a connection that opened but sent no complete
	// request head.
	headerTimeout = 10 * time.Second
)

// Handler returns the HTTP handler of the control API for s.
func Handler(s *Service) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(PathResources, s.get(s.resources))
	mux.HandleFunc(PathCapability, s.get(s.capability))
	mux.HandleFunc(PathSessions, s.get(s.sessions))
	mux.HandleFunc(PathReload, s.post(s.reload))
	mux.HandleFunc(PathHistory, s.get(s.history))
	mux.HandleFunc(PathEvents, s.get(s.events))
	mux.HandleFunc(PathDiagnose, s.get(s.diagnose))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, ErrorReply{Code: CodeNotFound, Message: "no endpoint " + r.URL.Path})
	})
	return mux
}

type endpoint func(ctx context.Context, r *http.Request) (any, error)

func (s *Service) get(fn endpoint) http.HandlerFunc  { return s.method(http.MethodGet, fn) }
func (s *Service) post(fn endpoint) http.HandlerFunc { return s.method(http.MethodPost, fn) }

func (s *Service) method(m string, fn endpoint) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != m {
			w.Header().Set("Allow", m)
			writeJSON(w, http.StatusMethodNotAllowed, ErrorReply{Code: CodeMethodNotAllowed,
				Message: fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, m)})
			return
		}
		timeout := s.Timeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		v, err := fn(ctx, r)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("%w: %w", errTimeout, err)
			}
			status, rep := replyFor(err)
			var br badRequest
			if errors.As(err, &br) {
				status, rep.Code = http.StatusBadRequest, CodeBadRequest
			}
			if s.Logger != nil {
				s.Logger.Warn("control request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
			}
			writeJSON(w, status, rep)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

type badRequest struct{ msg string }

func (b badRequest) Error() string { return b.msg }

func (s *Service) resources(ctx context.Context, _ *http.Request) (any, error) {
	if s.DataPlane == nil {
		return nil, dataplane.ErrClosed
	}
	r, err := s.DataPlane.ResourceStats(ctx)
	if err != nil {
		return nil, fmt.Errorf("read resources: %w", err)
	}
	rep := ResourcesReply{ResourceReport: r}
	if s.History != nil {
		rep.Trends = s.History.Trends()
		if rep.Trends == nil {
			rep.Trends = []history.Trend{}
		}
	}
	return rep, nil
}

func (s *Service) noHistory(what string) error {
	return &dataplane.NotSupportedError{What: what, Reasons: []string{"this server keeps no history"}}
}

func (s *Service) history(_ context.Context, r *http.Request) (any, error) {
	if s.History == nil {
		return nil, s.noHistory("read history")
	}
	q := r.URL.Query()
	var since time.Duration
	if v := q.Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, badRequest{fmt.Sprintf("since %q: want a positive duration such as 10m", v)}
		}
		since = d
	}
	rep := HistoryReply{Stats: s.History.Stats()}
	name := q.Get("name")
	if name == "" {
		rep.Rows = s.History.Rows()
		return rep, nil
	}
	scope := q.Get("scope")
	if scope == "" {
		scope = "global"
	}
	ser, err := s.History.Series(name, scope, since)
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	if ser.Points == nil {
		ser.Points = []history.Point{}
	}
	rep.Series = &ser
	return rep, nil
}

func (s *Service) events(context.Context, *http.Request) (any, error) {
	if s.History == nil {
		return nil, s.noHistory("read events")
	}
	return EventsReply{Events: s.History.Events(), Counts: s.History.EventCounts(), Stats: s.History.Stats()}, nil
}

func (s *Service) diagnose(ctx context.Context, r *http.Request) (any, error) {
	window := DefaultDiagnoseWindow
	if v := r.URL.Query().Get("window"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > MaxDiagnoseWindow {
			return nil, badRequest{fmt.Sprintf("window %q: want a duration above 0 and at most %s", v, MaxDiagnoseWindow)}
		}
		window = d
	}
	if s.Diagnose == nil {
		return nil, &dataplane.NotSupportedError{What: "diagnose", Reasons: []string{"this server cannot run the checks"}}
	}
	rep, err := s.Diagnose(ctx, window)
	if err != nil {
		return nil, fmt.Errorf("diagnose: %w", err)
	}
	return rep, nil
}

func (s *Service) capability(context.Context, *http.Request) (any, error) {
	if s.Decision == nil {
		return nil, &dataplane.NotSupportedError{What: "explain capability", Reasons: []string{"this server keeps no decision"}}
	}
	d := s.Decision()
	rep := CapabilityReply{Mode: d.Mode, Explanation: d.Explain(), Decision: d}
	if s.DataPlane != nil {
		rep.Mode = s.DataPlane.Mode()
	}
	return rep, nil
}

func (s *Service) sessions(ctx context.Context, r *http.Request) (any, error) {
	limit := DefaultSessionLimit
	if q := r.URL.Query().Get("limit"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n <= 0 || n > MaxSessionLimit {
			return nil, badRequest{fmt.Sprintf("limit %q: want a number from 1 to %d", q, MaxSessionLimit)}
		}
		limit = n
	}
	if s.DataPlane == nil {
		return nil, dataplane.ErrClosed
	}
	sl, ok := s.DataPlane.(dataplane.SessionLister)
	if !ok {
		return nil, &dataplane.NotSupportedError{What: "list sessions",
			Reasons: []string{fmt.Sprintf("the %s backend cannot enumerate sessions (counts are in /v1/resources)", s.DataPlane.Mode())}}
	}
	list, counts, err := sl.Sessions(ctx, limit)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	if list == nil {
		list = []dataplane.Session{}
	}
	return SessionsReply{Counts: counts, Limit: limit, Sessions: list, Truncated: uint64(len(list)) < counts.Total}, nil
}

func (s *Service) reload(ctx context.Context, r *http.Request) (any, error) {
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		// A body would suggest the config travels with the request; it
		// does not, and applying the file instead would surprise.
		return nil, badRequest{"reload takes no body: the server re-reads its own config source (edit that, then reload); nothing was applied"}
	}
	if s.Reload == nil {
		return nil, &dataplane.NotSupportedError{What: "reload", Reasons: []string{"this server has no config source to re-read"}}
	}
	s.reloadOnce.Do(func() { s.reloadSem = make(chan struct{}, 1) })
	select {
	case s.reloadSem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("reload not run: gave up waiting for the reload before it: %w", ctx.Err())
	}
	defer func() { <-s.reloadSem }()
	// The client may have left while the lock was handed over.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("reload not run: %w", err)
	}
	res, err := s.Reload(ctx)
	if err != nil {
		return nil, fmt.Errorf("reload: %w", err)
	}
	return res, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(ErrorReply{Code: CodeInternal, Message: "encode reply: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// Server serves the control API on a Unix socket.
type Server struct {
	path string
	ln   net.Listener
	lim  *limitListener
	http *http.Server
	done chan struct{}

	once sync.Once
	err  error
}

// Serve listens on path (see Listen) and serves s in the background until
// Close.
func Serve(path string, s *Service) (*Server, error) {
	ln, err := Listen(path)
	if err != nil {
		return nil, err
	}
	return ServeListener(ln, s), nil
}

// ServeListener serves s on ln (from Listen) in the background until Close.
// A daemon calls Listen first, to claim the socket before it touches the
// dataplane, and ServeListener once the dataplane runs.
func ServeListener(ln net.Listener, s *Service) *Server {
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	maxConns := s.MaxConns
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	srv := &Server{
		path: ln.Addr().String(),
		ln:   ln,
		lim:  &limitListener{Listener: ln, max: maxConns},
		http: &http.Server{Handler: Handler(s), ReadHeaderTimeout: min(headerTimeout, idle), IdleTimeout: idle},
		done: make(chan struct{}),
	}
	go func() {
		defer close(srv.done)
		// Serve returns ErrServerClosed after Shutdown; anything else
		// also ends serving, and Close reports the listener's state.
		srv.http.Serve(srv.lim)
	}()
	return srv
}

// Path is the socket path.
func (s *Server) Path() string {
	if s == nil {
		return ""
	}
	return s.path
}

// Conns returns the connections open now and the connections refused
// because MaxConns were open, since the server started.
func (s *Server) Conns() (open int, refused uint64) {
	if s == nil {
		return 0, 0
	}
	return int(s.lim.open.Load()), s.lim.refused.Load()
}

// Close stops accepting, waits up to 5 s for requests in flight, and
// removes the socket. It is idempotent and safe on nil.
func (s *Server) Close() error {
	if s == nil {
		return nil
	}
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.http.Shutdown(ctx); err != nil {
			s.err = fmt.Errorf("shut down control server: %w", err)
			s.http.Close()
		}
		// Shutdown closed the listener but the socket path is ours to
		// remove (the listener's Close does it; calling it again is a
		// no-op apart from that).
		if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.err = errors.Join(s.err, err)
		}
		<-s.done
	})
	return s.err
}
