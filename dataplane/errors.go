package dataplane

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrNotSupported means the backend or the host cannot provide a
	// requested feature. It is never returned for a transient failure.
	ErrNotSupported = errors.New("not supported")
	// ErrClosed means the dataplane was closed.
	ErrClosed = errors.New("dataplane closed")
	// ErrInvalidConfig means a config failed validation; the concrete error
	// is a *ConfigError with every problem.
	ErrInvalidConfig = errors.New("invalid config")
)

// Pinned dataplanes (a backend's PinDir option).
var (
	// ErrPinnedInUse means another live process holds the pinned
	// dataplane (the pin directory): it is neither adopted nor removed.
	ErrPinnedInUse = errors.New("pinned dataplane in use by another process")
)

// Problem is one validation failure, located by its JSON field path.
type Problem struct {
	// Field is the JSON path of the offending value, e.g.
	// "policies[2].destination_ports[0]".
	Field string `json:"field"`
	// Message says what is wrong, in lower case, without the field.
	Message string `json:"message"`
}

func (p Problem) String() string { return p.Field + ": " + p.Message }

// ConfigError lists every problem found in a config. It matches
// ErrInvalidConfig with errors.Is.
type ConfigError struct {
	Problems []Problem
}

func (e *ConfigError) Error() string {
	if len(e.Problems) == 0 {
		return ErrInvalidConfig.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem", ErrInvalidConfig, len(e.Problems))
	if len(e.Problems) > 1 {
		b.WriteByte('s')
	}
	for _, p := range e.Problems {
		b.WriteString("; ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Is reports whether target is ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// NotSupportedError says why a request cannot be served. It matches
// ErrNotSupported with errors.Is.
type NotSupportedError struct {
	// What was asked, e.g. "apply config" or "backend ebpf".
	What string
	// Reasons, one per missing capability, in words an operator can act on.
	Reasons []string
}

func (e *NotSupportedError) Error() string {
	msg := e.What
	if msg == "" {
		msg = "request"
	}
	msg += ": " + ErrNotSupported.Error()
	if len(e.Reasons) > 0 {
		msg += ": " + strings.Join(e.Reasons, "; ")
	}
	return msg
}

// Is reports whether target is ErrNotSupported.
func (e *NotSupportedError) Is(target error) bool { return target == ErrNotSupported }
