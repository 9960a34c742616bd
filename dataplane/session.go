package dataplane

import (
	"context"
	"time"
)

// The session model. Every backend implements it exactly; the shared
// conformance suite (internal/dptest) runs the same traffic through each
// backend and compares verdicts and counters.
//
// # States
//
// A session is one flow, stored once for both directions. The packet that
// creates it is sent by the initiator; packets from the responder travel
// in the reply direction.
//
// TCP (no sequence-number window tracking; flags only):
//
//   - A TCP packet without a session creates one only when it is a pure SYN
//     (SYN set, ACK and RST clear) that the policy allows: state
//     [StateOpening]. Any other TCP packet without a session is dropped and
//     counted ([CounterDropTCPNotSYN]), unless [SessionOpts.TCPPickup] is
//     set: then a non-RST packet the policy allows creates a session in
//     [StateEstablished], not yet assured; the first packet in the reply
//     direction that leaves it established (neither FIN nor RST) makes it
//     assured. An RST or FIN answering a picked-up packet completes
//     nothing.
//   - Opening: once a packet has been seen in the reply direction (the
//     SYN-ACK), a packet from the initiator with ACK set and SYN clear
//     completes the handshake: [StateEstablished], and the session becomes
//     assured.
//   - A FIN from one side moves an opening or established session to
//     [StateClosing]; a FIN from the other side as well moves it to
//     [StateClosed].
//   - An RST from either side moves any session to [StateClosed].
//   - A pure SYN meeting a session in [StateClosed] (a new connection
//     reusing the tuple) ends that session; the SYN is then judged as the
//     first packet of a new flow (policy, zones, a new session).
//
// Other protocols (UDP, ICMP echo, anything else): the first packet the
// policy allows creates a session in [StateUnreplied]; the first packet in
// the reply direction makes it [StateReplied] and assured.
//
// ICMP errors (destination unreachable, time exceeded, parameter problem,
// packet too big) never create or refresh a session: one that quotes a
// live session and travels towards the quoted packet's sender is forwarded
// as part of that flow; any other is dropped and counted.
//
// # Timeouts
//
// A session expires when it has been idle for longer than the timeout of
// its state ([Timeouts.ForState]). Expired sessions are removed by the
// backend on its own (a sweep; the eBPF backend sweeps in the kernel, so
// expiry goes on while no process runs) and never match a packet.
//
// # Assured sessions, a full table, early aging
//
// A session is assured once traffic was seen in both directions (TCP: the
// handshake completed). Assured stays set for the session's life.
//
// When a new flow finds the table full, the backend examines a bounded
// number of candidate sessions and may evict one that is expired or
// unassured (early drop, [CounterSessionEarlyDrop] for an unassured one).
// An assured, unexpired session is never evicted to make room. When no
// candidate is found the new flow is dropped ([CounterSessionTableFull]).
//
// While the table is at or above the warning threshold (80 % of
// tables.sessions), the timeouts of unassured states (TCP opening, every
// unreplied state) are divided by [Timeouts.EarlyAgingFactor]: a flood of
// unanswered flows clears itself faster. Reports say so
// ([SessionCounts.EarlyAging]).
//
// # Zones
//
// A session records the zone of the interface its first packet arrived on
// (FromZone) and the zone of the interface it was routed out of (ToZone).
// A packet that matches the session's tuple is forwarded by the session
// only when it arrives from an interface of FromZone (initiator direction)
// or ToZone (reply direction); otherwise it is dropped and counted
// ([CounterDropZoneMismatch]) and the session is left as it was.
//
// # Policy changes
//
// On Apply, every session is judged again, as its first packet would be
// under the new config (its initiator's tuple, its zones). Sessions the new
// policy denies, or whose zones no longer exist, are ended
// ([CounterSessionsEndedByPolicy]) unless [SessionOpts.KeepOnPolicyChange]
// is set. [SessionClearer] ends sessions on demand.

// SessionState is a session's place in the session model.
type SessionState uint8

const (
	StateNone        SessionState = 0 // not a state: no session
	StateOpening     SessionState = 1 // TCP: SYN seen, handshake not complete
	StateEstablished SessionState = 2 // TCP: handshake complete (or picked up)
	StateClosing     SessionState = 3 // TCP: FIN seen from one side
	StateClosed      SessionState = 4 // TCP: RST seen, or FIN from both sides
	StateUnreplied   SessionState = 5 // other protocols: initiator's direction only
	StateReplied     SessionState = 6 // other protocols: both directions seen
)

func (s SessionState) String() string {
	switch s {
	case StateOpening:
		return "opening"
	case StateEstablished:
		return "established"
	case StateClosing:
		return "closing"
	case StateClosed:
		return "closed"
	case StateUnreplied:
		return "unreplied"
	case StateReplied:
		return "replied"
	}
	return "none"
}

// MarshalText makes states readable in JSON.
func (s SessionState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a state name.
func (s *SessionState) UnmarshalText(b []byte) error {
	for c := StateNone; c <= StateReplied; c++ {
		if c.String() == string(b) {
			*s = c
			return nil
		}
	}
	*s = StateNone
	return nil
}

// Unassured reports whether a session in this state can still be
// unassured, i.e. whether early aging shortens its timeout.
func (s SessionState) Unassured() bool { return s == StateOpening || s == StateUnreplied }

// Session timeout defaults. Anchors: Linux conntrack (SYN_SENT 120 s,
// FIN_WAIT 120 s, CLOSE 10 s, UDP 30 s unreplied / 120 s stream), Cilium
// (SYN 60 s, close 10 s, established 6 h), Junos (TCP initial 20 s); the
// opening and closing timeouts are seconds so that half-open and dead
// connections leave quickly, the established one hours.
const (
	DefaultTCPTimeout            = 2 * time.Hour // established
	DefaultTCPOpeningTimeout     = 30 * time.Second
	DefaultTCPClosingTimeout     = 30 * time.Second
	DefaultTCPClosedTimeout      = 10 * time.Second
	DefaultUDPTimeout            = 60 * time.Second // replied
	DefaultUDPUnrepliedTimeout   = 30 * time.Second
	DefaultICMPTimeout           = 30 * time.Second // replied
	DefaultICMPUnrepliedTimeout  = 10 * time.Second
	DefaultOtherTimeout          = 60 * time.Second // replied
	DefaultOtherUnrepliedTimeout = 30 * time.Second
	// DefaultEarlyAgingFactor divides unassured timeouts while the
	// session table is at or above the warning threshold.
	DefaultEarlyAgingFactor = 4
	// MaxEarlyAgingFactor bounds Timeouts.EarlyAgingFactor.
	MaxEarlyAgingFactor = 1024
	// MaxTimeout bounds every timeout (30 days): a larger one is a typo.
	MaxTimeout = 30 * 24 * time.Hour
)

// Timeouts are the session idle timeouts, per protocol and state. Zero
// means the default. TCP is the established timeout; UDP, ICMP and Other
// are the timeouts of replied sessions.
type Timeouts struct {
	TCP            Duration `json:"tcp,omitempty"`
	TCPOpening     Duration `json:"tcp_opening,omitempty"`
	TCPClosing     Duration `json:"tcp_closing,omitempty"`
	TCPClosed      Duration `json:"tcp_closed,omitempty"`
	UDP            Duration `json:"udp,omitempty"`
	UDPUnreplied   Duration `json:"udp_unreplied,omitempty"`
	ICMP           Duration `json:"icmp,omitempty"`
	ICMPUnreplied  Duration `json:"icmp_unreplied,omitempty"`
	Other          Duration `json:"other,omitempty"`
	OtherUnreplied Duration `json:"other_unreplied,omitempty"`
	// EarlyAgingFactor divides the timeouts of unassured states while
	// the session table is at or above 80 % (0 = the default, 4; 1 turns
	// early aging off).
	EarlyAgingFactor uint32 `json:"early_aging_factor,omitempty"`
}

// For returns the timeout of an established (TCP) or replied (others)
// session of IP protocol number proto.
func (t Timeouts) For(proto uint8) time.Duration {
	switch proto {
	case 6:
		return t.ForState(proto, StateEstablished)
	}
	return t.ForState(proto, StateReplied)
}

// ForState returns the idle timeout of a session of IP protocol number
// proto in state s, without early aging. A state that does not belong to
// the protocol (a TCP state for UDP, say) gets the protocol's replied or
// established timeout.
func (t Timeouts) ForState(proto uint8, s SessionState) time.Duration {
	switch proto {
	case 6:
		switch s {
		case StateOpening:
			return orDefaultDur(t.TCPOpening, DefaultTCPOpeningTimeout)
		case StateClosing:
			return orDefaultDur(t.TCPClosing, DefaultTCPClosingTimeout)
		case StateClosed:
			return orDefaultDur(t.TCPClosed, DefaultTCPClosedTimeout)
		}
		return orDefaultDur(t.TCP, DefaultTCPTimeout)
	case 17:
		if s == StateUnreplied {
			return orDefaultDur(t.UDPUnreplied, DefaultUDPUnrepliedTimeout)
		}
		return orDefaultDur(t.UDP, DefaultUDPTimeout)
	case 1, 58:
		if s == StateUnreplied {
			return orDefaultDur(t.ICMPUnreplied, DefaultICMPUnrepliedTimeout)
		}
		return orDefaultDur(t.ICMP, DefaultICMPTimeout)
	}
	if s == StateUnreplied {
		return orDefaultDur(t.OtherUnreplied, DefaultOtherUnrepliedTimeout)
	}
	return orDefaultDur(t.Other, DefaultOtherTimeout)
}

// EarlyAgingFactorOrDefault returns the early aging divisor to use (>= 1).
func (t Timeouts) EarlyAgingFactorOrDefault() uint32 {
	return orDefault(t.EarlyAgingFactor, DefaultEarlyAgingFactor)
}

// SessionOpts are the session-model switches of a config.
type SessionOpts struct {
	// TCPPickup lets a TCP packet other than a SYN create a session
	// (mid-stream pickup, e.g. after a firewall without persisted state
	// was replaced). Off by default: only a SYN opens a TCP session.
	TCPPickup bool `json:"tcp_pickup,omitempty"`
	// KeepOnPolicyChange keeps sessions that a new config's policy would
	// deny, until they idle out. Off by default: Apply ends them.
	KeepOnPolicyChange bool `json:"keep_on_policy_change,omitempty"`
}

// Counter names every backend reports for the session model (scope
// "global").
const (
	CounterSessionEarlyDrop      = "session_early_drop"       // unassured session evicted for a new flow
	CounterSessionTableFull      = "session_table_full"       // new flow dropped: table full, no candidate
	CounterDropTCPNotSYN         = "dropped_tcp_not_syn"      // TCP without session and not a SYN
	CounterDropZoneMismatch      = "dropped_zone_mismatch"    // session hit from an interface of another zone
	CounterSessionsEndedByPolicy = "sessions_ended_by_policy" // ended by Apply: the new policy denies them
	CounterSessionsCleared       = "sessions_cleared"         // ended by ClearSessions
)

// ResourceSessionsUnassured is the report row (every backend) counting
// unassured (half-open, unreplied) sessions against the session capacity,
// so that a flood of new flows shows as a level of its own.
const ResourceSessionsUnassured = "sessions_unassured"

// SessionFilter selects sessions. Every set field must match; the zero
// value selects every session.
type SessionFilter struct {
	// Protocol: "tcp", "udp", "icmp", "icmpv6" or a number; "" = any.
	Protocol string `json:"protocol,omitempty"`
	// Address: an address or prefix either endpoint must be in.
	Address string `json:"address,omitempty"`
	// Port: a port either endpoint must use; 0 = any.
	Port uint16 `json:"port,omitempty"`
	// Zone: the session's FromZone or ToZone.
	Zone string `json:"zone,omitempty"`
}

// SessionClearer is implemented by backends that can end sessions on
// demand (`fwctl clear sessions`).
type SessionClearer interface {
	// ClearSessions ends every session f selects and returns how many.
	ClearSessions(ctx context.Context, f SessionFilter) (int, error)
}

// Releaser is implemented by backends whose dataplane can outlive the
// process (a pinned eBPF dataplane, a pinned userspace shim). Release ends
// this process's hold on the dataplane and leaves it enforcing the last
// applied config, for an upgrade or a restart that adopts it; Close, by
// contrast, removes everything. After Release the value is closed.
type Releaser interface {
	Release() error
}
