package control

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/diagnose"
	"github.com/fwplane/fwplane/history"
)

// DefaultSocket is where fwd listens and fwctl connects by default.
const DefaultSocket = "/run/fwplane/fwd.sock"

// Session listing bounds.
const (
	DefaultSessionLimit = 100
	MaxSessionLimit     = 100000
)

// Endpoint paths.
const (
	PathResources  = "/v1/resources"
	PathCapability = "/v1/capability"
	PathSessions   = "/v1/sessions"
	PathReload     = "/v1/reload"
	PathHistory    = "/v1/history"
	PathEvents     = "/v1/events"
	PathDiagnose   = "/v1/diagnose"
)

// Diagnose window bounds.
const (
	DefaultDiagnoseWindow = diagnose.DefaultWindow
	MaxDiagnoseWindow     = 20 * time.Second
)

// ResourcesReply is the body of GET /v1/resources: the report and, when
// the server keeps a history, every counted row's trend. It decodes into a
// dataplane.ResourceReport as well (the trends are one more field).
type ResourcesReply struct {
	dataplane.ResourceReport
	// Trends are nil when the server keeps no history.
	Trends []history.Trend `json:"trends,omitempty"`
}

// HistoryReply is the body of GET /v1/history?name=N[&scope=S][&since=D]:
// one row's samples, or (without a name) the rows kept.
type HistoryReply struct {
	Series *history.Series  `json:"series,omitempty"`
	Rows   []history.Series `json:"rows,omitempty"`
	Stats  history.Stats    `json:"stats"`
}

// EventsReply is the body of GET /v1/events: the threshold events kept,
// oldest first, and how often each row entered each level.
type EventsReply struct {
	Events []history.Event      `json:"events"`
	Counts []history.EventCount `json:"counts"`
	Stats  history.Stats        `json:"stats"`
}

// CapabilityReply is the body of GET /v1/capability.
type CapabilityReply struct {
	// Mode is the running backend.
	Mode dataplane.Mode `json:"mode"`
	// Explanation is Decision.Explain(): the decision in words.
	Explanation string `json:"explanation"`
	// Decision is the decision made when the dataplane was opened.
	Decision capability.Decision `json:"decision"`
}

// SessionsReply is the body of GET /v1/sessions.
type SessionsReply struct {
	// Counts are the backend's session counts at the time of the call.
	Counts dataplane.SessionCounts `json:"counts"`
	// Limit is the limit the listing was made with.
	Limit int `json:"limit"`
	// Sessions lists at most Limit sessions.
	Sessions []dataplane.Session `json:"sessions"`
	// Truncated is set when fewer sessions are listed than were counted:
	// the limit cut the listing (or sessions idled out between count and
	// listing).
	Truncated bool `json:"truncated,omitempty"`
}

// Error codes of ErrorReply.
const (
	CodeBadRequest       = "bad_request"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeNotFound         = "not_found"
	CodeInvalidConfig    = "invalid_config"
	CodeNotSupported     = "not_supported"
	CodeClosed           = "closed"
	CodeTimeout          = "timeout"
	CodeBusy             = "busy"
	CodeInternal         = "internal"
)

// ErrorReply is the body of every non-2xx reply.
type ErrorReply struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Problems of an invalid config, each with its field path.
	Problems []dataplane.Problem `json:"problems,omitempty"`
	// Reasons why something is not supported.
	Reasons []string `json:"reasons,omitempty"`
}

// Error is a failure the server reported. It matches the dataplane
// sentinel its code stands for with errors.Is.
type Error struct {
	// Status is the HTTP status.
	Status int
	ErrorReply
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Message)
	if b.Len() == 0 {
		fmt.Fprintf(&b, "%s (HTTP %d)", e.Code, e.Status)
	}
	return b.String()
}

// Is matches dataplane.ErrInvalidConfig, dataplane.ErrNotSupported and
// dataplane.ErrClosed by code.
func (e *Error) Is(target error) bool {
	switch e.Code {
	case CodeInvalidConfig:
		return target == dataplane.ErrInvalidConfig
	case CodeNotSupported:
		return target == dataplane.ErrNotSupported
	case CodeClosed:
		return target == dataplane.ErrClosed
	}
	return false
}

// ConfigError returns the problems as a *dataplane.ConfigError, or nil
// when the reply was not about an invalid config.
func (e *Error) ConfigError() *dataplane.ConfigError {
	if e.Code != CodeInvalidConfig {
		return nil
	}
	return &dataplane.ConfigError{Problems: e.Problems}
}

// replyFor maps an error from the dataplane (or the service) to its status
// and body, keeping every problem and reason.
func replyFor(err error) (int, ErrorReply) {
	rep := ErrorReply{Message: err.Error()}
	var ce *dataplane.ConfigError
	var nse *dataplane.NotSupportedError
	switch {
	case errors.As(err, &ce):
		rep.Code, rep.Problems = CodeInvalidConfig, ce.Problems
		return http.StatusUnprocessableEntity, rep
	case errors.Is(err, dataplane.ErrInvalidConfig):
		rep.Code = CodeInvalidConfig
		return http.StatusUnprocessableEntity, rep
	case errors.As(err, &nse):
		rep.Code, rep.Reasons = CodeNotSupported, nse.Reasons
		return http.StatusNotImplemented, rep
	case errors.Is(err, dataplane.ErrNotSupported):
		rep.Code = CodeNotSupported
		return http.StatusNotImplemented, rep
	case errors.Is(err, dataplane.ErrClosed):
		rep.Code = CodeClosed
		return http.StatusServiceUnavailable, rep
	case errors.Is(err, history.ErrNoRow):
		rep.Code = CodeNotFound
		return http.StatusNotFound, rep
	case errors.Is(err, errTimeout):
		rep.Code = CodeTimeout
		return http.StatusGatewayTimeout, rep
	}
	rep.Code = CodeInternal
	return http.StatusInternalServerError, rep
}

var errTimeout = errors.New("request timed out")
