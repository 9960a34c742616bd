package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/diagnose"
)

// maxReply bounds a reply body: a full session listing is the largest.
const maxReply = 256 << 20

// ClientOptions configure a Client; nil means defaults.
type ClientOptions struct {
	// Timeout bounds each call when its context has no deadline; 0 means
	// 30 s.
	Timeout time.Duration
}

// Client calls the control API on a Unix socket.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at path ("" = DefaultSocket).
// It connects on each call.
func NewClient(path string, opts *ClientOptions) *Client {
	if path == "" {
		path = DefaultSocket
	}
	timeout := 30 * time.Second
	if opts != nil && opts.Timeout > 0 {
		timeout = opts.Timeout
	}
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{path: path, hc: &http.Client{Transport: tr, Timeout: timeout}}
}

// Path is the socket path the client connects to.
func (c *Client) Path() string { return c.path }

// Close drops idle connections. It is idempotent and safe on nil.
func (c *Client) Close() error {
	if c != nil {
		c.hc.CloseIdleConnections()
	}
	return nil
}

// Resources returns the dataplane's resource report.
func (c *Client) Resources(ctx context.Context) (dataplane.ResourceReport, error) {
	var r dataplane.ResourceReport
	err := c.do(ctx, http.MethodGet, PathResources, nil, &r)
	return r, err
}

// Buffers returns the resource report with the trends of every counted
// row (Trends is nil when the server keeps no history).
func (c *Client) Buffers(ctx context.Context) (ResourcesReply, error) {
	var r ResourcesReply
	err := c.do(ctx, http.MethodGet, PathResources, nil, &r)
	return r, err
}

// History returns one row's samples over the last since (0 = all kept);
// an empty scope means "global". An unknown row is an *Error with code
// not_found.
func (c *Client) History(ctx context.Context, name, scope string, since time.Duration) (HistoryReply, error) {
	q := url.Values{"name": {name}}
	if scope != "" {
		q.Set("scope", scope)
	}
	if since > 0 {
		q.Set("since", since.String())
	}
	var r HistoryReply
	err := c.do(ctx, http.MethodGet, PathHistory, q, &r)
	return r, err
}

// HistoryRows lists the rows whose history the server keeps.
func (c *Client) HistoryRows(ctx context.Context) (HistoryReply, error) {
	var r HistoryReply
	err := c.do(ctx, http.MethodGet, PathHistory, nil, &r)
	return r, err
}

// Events returns the threshold events the server keeps.
func (c *Client) Events(ctx context.Context) (EventsReply, error) {
	var r EventsReply
	err := c.do(ctx, http.MethodGet, PathEvents, nil, &r)
	return r, err
}

// Diagnose runs the debugging checklist over window (0 = the server's
// default, 2 s). The call lasts at least the window.
func (c *Client) Diagnose(ctx context.Context, window time.Duration) (diagnose.Report, error) {
	q := url.Values{}
	if window > 0 {
		q.Set("window", window.String())
	}
	var r diagnose.Report
	err := c.do(ctx, http.MethodGet, PathDiagnose, q, &r)
	return r, err
}

// Capability returns the backend decision.
func (c *Client) Capability(ctx context.Context) (CapabilityReply, error) {
	var r CapabilityReply
	err := c.do(ctx, http.MethodGet, PathCapability, nil, &r)
	return r, err
}

// Sessions returns the session counts and at most limit sessions (limit <=
// 0: the server's default). An error matching dataplane.ErrNotSupported
// means the backend cannot enumerate sessions.
func (c *Client) Sessions(ctx context.Context, limit int) (SessionsReply, error) {
	var r SessionsReply
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	err := c.do(ctx, http.MethodGet, PathSessions, q, &r)
	return r, err
}

// Reload asks the server to re-read and apply its config. A refused
// config is an *Error matching dataplane.ErrInvalidConfig (with every
// problem) or dataplane.ErrNotSupported (with every reason); the old
// config keeps running.
func (c *Client) Reload(ctx context.Context) (dataplane.ApplyResult, error) {
	var r dataplane.ApplyResult
	err := c.do(ctx, http.MethodPost, PathReload, nil, &r)
	return r, err
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, out any) error {
	return c.doURL(ctx, method, url.URL{Scheme: "http", Host: "fwd", Path: path, RawQuery: q.Encode()}, nil, out)
}

// doBody sends a request with a body (no endpoint takes one today; tests
// use it to check that refusal).
func (c *Client) doBody(ctx context.Context, method, path string, body io.Reader, out any) error {
	return c.doURL(ctx, method, url.URL{Scheme: "http", Host: "fwd", Path: path}, body, out)
}

func (c *Client) doURL(ctx context.Context, method string, u url.URL, body io.Reader, out any) error {
	path := u.Path
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.connErr(method, path, err)
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return fmt.Errorf("%s %s: read reply: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if jerr := json.Unmarshal(reply, &e.ErrorReply); jerr != nil || e.Code == "" {
			e.Code, e.Message = CodeInternal, fmt.Sprintf("%s %s: HTTP %d: %.200s", method, path, resp.StatusCode, reply)
		}
		return e
	}
	if err := json.Unmarshal(reply, out); err != nil {
		return fmt.Errorf("%s %s: decode reply: %w", method, path, err)
	}
	return nil
}

// connErr explains a failed connection in the operator's terms.
func (c *Client) connErr(method, path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return &notRunningError{path: c.path, err: err}
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("connect to %s: permission denied (the socket is owner-only: run as the daemon's user): %w", c.path, err)
	}
	return fmt.Errorf("%s %s on %s: %w", method, path, c.path, err)
}

type notRunningError struct {
	path string
	err  error
}

func (e *notRunningError) Error() string {
	return fmt.Sprintf("no daemon listening on %s (is fwd running? start it, or pass --socket): %v", e.path, rootCause(e.err))
}

func (e *notRunningError) Is(target error) bool { return target == ErrNotRunning }
func (e *notRunningError) Unwrap() error        { return e.err }

func rootCause(err error) error {
	var se *net.OpError
	if errors.As(err, &se) && se.Err != nil {
		return se.Err
	}
	return err
}
