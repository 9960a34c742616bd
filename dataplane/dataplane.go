package dataplane

import (
	"context"
	"io"
)

// Mode names a backend.
type Mode string

const (
	// ModeEBPF forwards in the kernel with XDP programs.
	ModeEBPF Mode = "ebpf"
	// ModeUserspace forwards in Go over AF_XDP sockets.
	ModeUserspace Mode = "userspace"
)

// DataPlane is a running packet dataplane. See the package documentation for
// the error and concurrency contract.
type DataPlane interface {
	// Mode says which backend runs.
	Mode() Mode
	// Apply validates cfg and, if it is valid and can be programmed,
	// replaces the running configuration atomically. On error nothing
	// changed.
	Apply(ctx context.Context, cfg *Config) (ApplyResult, error)
	// ResourceStats reports every bounded resource and the counters. Rows
	// for the detailed view (per binding, per shard) are marked Detail.
	ResourceStats(ctx context.Context) (ResourceReport, error)
	// Close detaches every program, closes every socket and removes what
	// the dataplane pinned. It is idempotent.
	io.Closer
}

// ApplyResult describes an applied configuration.
type ApplyResult struct {
	// Generation increases by one with every successful Apply, starting
	// at 1.
	Generation uint64 `json:"generation"`
	// Warnings lists soft problems: parts of the config that were skipped
	// as the contract allows (e.g. an unresolved mirror output).
	Warnings []Warning `json:"warnings,omitempty"`
}

// Warning is a soft problem found while applying a config.
type Warning struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (w Warning) String() string { return w.Field + ": " + w.Message }

// ResourceStatsReuser is implemented by backends that can write a report
// into the caller's ResourceReport, reusing its arrays: a poller reading
// reports many times a second and keeping none then allocates nothing
// large per read. Use it through [ReadResourceStats].
type ResourceStatsReuser interface {
	// ResourceStatsInto overwrites *rep (non-nil) with a fresh report,
	// reusing rep's Resources and Counters arrays when large enough and
	// writing the session counts into *rep.Sessions when it is set. The
	// previous rows and counts are overwritten: copying the
	// ResourceReport struct keeps nothing (it shares them); clone the
	// slices, or copy single rows, which stay valid. On error *rep is
	// unchanged.
	ResourceStatsInto(ctx context.Context, rep *ResourceReport) error
}

// ReadResourceStats reads dp's report into *rep: in place when dp is a
// [ResourceStatsReuser], else by assigning dp.ResourceStats' report. On
// error *rep is unchanged.
func ReadResourceStats(ctx context.Context, dp DataPlane, rep *ResourceReport) error {
	if r, ok := dp.(ResourceStatsReuser); ok {
		return r.ResourceStatsInto(ctx, rep)
	}
	fresh, err := dp.ResourceStats(ctx)
	if err != nil {
		return err
	}
	*rep = fresh
	return nil
}

// SessionLister is implemented by backends that can enumerate sessions.
type SessionLister interface {
	// Sessions returns at most limit sessions (limit <= 0: a backend
	// default) and the total count at the time of the call.
	Sessions(ctx context.Context, limit int) ([]Session, SessionCounts, error)
}

// Session is one tracked flow, seen from its initiator.
type Session struct {
	Protocol    string `json:"protocol"`
	Source      string `json:"source"`      // address:port of the initiator
	Destination string `json:"destination"` // address:port of the responder
	Packets     uint64 `json:"packets,omitempty"`
	Bytes       uint64 `json:"bytes,omitempty"`
	// IdleSeconds since the last packet, where the backend knows it.
	IdleSeconds float64 `json:"idle_seconds,omitempty"`
	// State in the session model, and whether the session is assured
	// (see session.go).
	State   SessionState `json:"state,omitempty"`
	Assured bool         `json:"assured,omitempty"`
	// FromZone is the zone the first packet arrived from, ToZone the zone
	// it was routed to.
	FromZone string `json:"from_zone,omitempty"`
	ToZone   string `json:"to_zone,omitempty"`
	// TranslatedSource and TranslatedDestination are the tuple as it
	// leaves the firewall towards the responder, set only on a translated
	// session (see nat.go): the source after source NAT, the destination
	// after destination NAT. Either equals Source/Destination when only the
	// other side is translated. The reply direction is their mirror image.
	TranslatedSource      string `json:"translated_source,omitempty"`
	TranslatedDestination string `json:"translated_destination,omitempty"`
	// NATRule names the rule(s) that translated the session ("dnat-name",
	// "snat-name" or "dnat-name,snat-name"; a rule's index "#n" when it has
	// no name).
	NATRule string `json:"nat_rule,omitempty"`
}
