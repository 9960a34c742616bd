// Package control is the control protocol between a running fwplane
// dataplane (the reference daemon fwd, or anything that embeds fwplane) and
// the operator CLI fwctl: HTTP/1.1 with JSON bodies over a Unix socket that
// only its owner can open.
//
// # Protocol
//
// Every endpoint is versioned under /v1 and answers application/json:
//
//	GET  /v1/resources          ResourcesReply: dataplane.ResourceReport (one
//	                            fresh read) and, with a history, the trends
//	GET  /v1/capability         CapabilityReply: the backend decision, in
//	                            words (explanation) and as data (decision)
//	GET  /v1/sessions?limit=N   SessionsReply: the session counts and at most
//	                            N sessions (default 100, at most 100000)
//	POST /v1/reload             dataplane.ApplyResult of re-applying the
//	                            daemon's config source (e.g. its file)
//	GET  /v1/history?name=N&scope=S&since=D
//	                            HistoryReply: a row's samples (no name: the
//	                            rows kept)
//	GET  /v1/events             EventsReply: threshold events, counts
//	GET  /v1/diagnose?window=D  diagnose.Report: the debugging checklist
//	                            over D (default 2 s, at most 20 s)
//
// A failure is never a 200 with a made-up zero: it is a non-2xx status with
// an ErrorReply body whose code is one of the Code* constants, e.g.
//
//	501 {"code":"not_supported","message":"list sessions: not supported: ..."}
//	422 {"code":"invalid_config","message":"...","problems":[{"field":...}]}
//
// [Client] turns such a reply into an *[Error] that matches
// dataplane.ErrInvalidConfig, dataplane.ErrNotSupported or
// dataplane.ErrClosed with errors.Is, as the dataplane itself would have
// returned. A client that finds no daemon on the socket returns an error
// matching [ErrNotRunning].
//
// The protocol is plain enough for curl:
//
//	curl --unix-socket /run/fwplane/fwd.sock http://fwd/v1/resources
//
// # Socket
//
// [Listen] creates the socket's directory with mode 0700 when it does not
// exist, removes a stale socket left by a process that died, refuses to
// start ([ErrInUse]) when another server answers on the path, and binds the
// socket under a temporary name, sets it to 0600, then links it into place,
// so the path never exists with wider permissions and two servers starting
// at once cannot both win. Closing the listener removes the path only if it
// is still the socket this listener created.
//
// # Concurrency
//
// A [Server] serves requests concurrently; the [Service] it wraps must be
// safe for concurrent use (a dataplane.DataPlane is). Reloads run one at a
// time: a reload request waits for the one before it only as long as its
// client waits, and one whose client went away (or that timed out) never
// runs. A [Client] is safe for concurrent use. Close on either is
// idempotent and safe on nil.
//
// # Limits
//
// A connection that sends no request for Service.IdleTimeout (default
// 30 s) is closed, keep-alive connections included; at most
// Service.MaxConns (default 64) are open at once, and one more is answered
// 503 {"code":"busy"} and closed rather than left queued. POST /v1/reload
// with a body is refused (400 bad_request): the server re-reads its own
// config source and never applies what a request carries.
package control
