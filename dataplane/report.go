package dataplane

import (
	"fmt"
	"time"
)

// Resource kinds used by the backends. Kinds are free text for the
// renderer; these are the ones fwplane's backends emit.
const (
	KindHash        = "hash"
	KindLRUHash     = "lru_hash"
	KindPerCPUHash  = "percpu_hash"
	KindArray       = "array"
	KindPerCPUArray = "percpu_array"
	KindLPMTrie     = "lpm_trie"
	KindDevMap      = "devmap"
	KindXSKMap      = "xskmap"
	KindUMEM        = "umem"
	KindRing        = "ring"
	KindTable       = "table"
	KindCache       = "cache"
	KindQueue       = "queue"
	KindPool        = "pool" // address x port slots (source-NAT pools)
)

// Counting methods: how Resource.Used was obtained.
const (
	MethodKfunc    = "kfunc"    // iter/bpf_map + bpf_map_sum_elem_count
	MethodBatch    = "batch"    // BPF_MAP_LOOKUP_BATCH
	MethodWalk     = "walk"     // BPF_MAP_GET_NEXT_KEY
	MethodCounter  = "counter"  // a counter the dataplane maintains
	MethodRing     = "ring"     // producer - consumer of a shared ring
	MethodSnapshot = "snapshot" // a consistent read of userspace state
)

// ResourceReport is one read of every bounded resource of a dataplane.
type ResourceReport struct {
	Mode Mode `json:"mode"`
	// Generation of the config in force when the report was taken.
	Generation uint64 `json:"generation"`
	// Taken is when the read started; Took how long it lasted.
	Taken time.Time     `json:"taken"`
	Took  time.Duration `json:"took_ns"`
	// Resources, aggregate rows first; rows with Detail set belong to the
	// detailed view (per binding, per queue, per shard).
	Resources []Resource `json:"resources"`
	Counters  []Counter  `json:"counters,omitempty"`
	// Sessions is nil when the backend could not count them; it is never
	// a made-up zero.
	Sessions *SessionCounts `json:"sessions,omitempty"`
	// Interfaces says how the dataplane is attached to each managed
	// interface, and why.
	Interfaces []InterfaceStatus `json:"interfaces,omitempty"`
}

// SessionCounts counts active sessions by address family.
type SessionCounts struct {
	IPv4  uint64 `json:"ipv4"`
	IPv6  uint64 `json:"ipv6"`
	Total uint64 `json:"total"`
	// Unassured counts the sessions not (yet) seen in both directions,
	// as of the backend's last count of them (see the
	// ResourceSessionsUnassured row for how and when).
	Unassured uint64 `json:"unassured"`
	// EarlyAging is set while unassured timeouts are shortened because
	// the table is at or above the warning threshold.
	EarlyAging bool `json:"early_aging,omitempty"`
}

// Attachment modes reported in InterfaceStatus.Attach.
const (
	AttachedXDP        = "xdp"         // native (driver) XDP
	AttachedXDPGeneric = "xdp-generic" // generic (skb) XDP
	AttachedTC         = "tc"          // clsact ingress (tcx)
)

// InterfaceStatus is how a dataplane is attached to one interface.
type InterfaceStatus struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex,omitempty"`
	Zone    string `json:"zone,omitempty"`
	// Attach is one of the Attached* constants.
	Attach string `json:"attach"`
	// Reason says why this mode was chosen (forced by config, or the
	// gate's reason).
	Reason string `json:"reason,omitempty"`
}

// Resource is one bounded resource: a map, a ring, a table, a pool.
type Resource struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	Scope string `json:"scope"`
	// Detail marks a per-binding, per-queue or per-shard row.
	Detail bool `json:"detail,omitempty"`
	// Capacity is the fixed number of slots; 0 means the resource has no
	// fixed capacity and so no utilisation.
	Capacity uint64 `json:"capacity"`
	// Used is nil when the resource cannot be counted (arrays keep no
	// count: every slot always exists) or counting failed (see Error).
	Used *uint64 `json:"used,omitempty"`
	// Method says how Used was obtained (Method* constants).
	Method string `json:"method,omitempty"`
	// Cost is how long counting this resource took, where measured.
	Cost time.Duration `json:"cost_ns,omitempty"`
	// Partial is set when Used is a lower bound: a walk that was stopped
	// by its cap or its context.
	Partial bool `json:"partial,omitempty"`
	// Restarts counts how often a next-key walk had to restart.
	Restarts uint32 `json:"restarts,omitempty"`
	// KeySize and ValueSize, in bytes, for BPF maps.
	KeySize   uint32 `json:"key_size,omitempty"`
	ValueSize uint32 `json:"value_size,omitempty"`
	// Breakdown splits Capacity (e.g. UMEM frames by state); its values
	// add up to Capacity where the backend says so.
	Breakdown []Part `json:"breakdown,omitempty"`
	// Error says why Used is missing, when it is missing because of a
	// failure rather than by nature.
	Error string `json:"error,omitempty"`
	// Figures are measurements that describe the row without being a
	// count of its slots (e.g. the session table's shard skew). They are
	// values, never part of the row's identity (Name, Scope), so that a
	// changing figure never makes a row, or a metric series, new.
	Figures []Figure `json:"figures,omitempty"`
}

// Figure is one named measurement of a resource row.
type Figure struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
}

// Part is one named share of a resource.
type Part struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// Counter is a monotonically increasing count, such as packets dropped for
// a reason.
type Counter struct {
	Name   string `json:"name"`
	Scope  string `json:"scope"`
	Detail bool   `json:"detail,omitempty"`
	Value  uint64 `json:"value"`
}

// Uint64 returns a pointer to v, for Resource.Used.
func Uint64(v uint64) *uint64 { return &v }

// Utilization returns Used/Capacity in percent, and false when there is no
// real capacity or no count: then no percentage may be shown.
func (r Resource) Utilization() (float64, bool) {
	if r.Capacity == 0 || r.Used == nil {
		return 0, false
	}
	return float64(*r.Used) * 100 / float64(r.Capacity), true
}

// Level grades a utilisation.
type Level int

const (
	LevelNone     Level = iota // no utilisation to grade
	LevelOK                    // below the warning threshold
	LevelWarning               // >= warning threshold
	LevelCritical              // >= critical threshold
)

func (l Level) String() string {
	switch l {
	case LevelOK:
		return "OK"
	case LevelWarning:
		return "WARNING"
	case LevelCritical:
		return "CRITICAL"
	}
	return "-"
}

// MarshalText makes levels readable in JSON.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses a level name as MarshalText writes it.
func (l *Level) UnmarshalText(b []byte) error {
	for c := LevelNone; c <= LevelCritical; c++ {
		if c.String() == string(b) {
			*l = c
			return nil
		}
	}
	return fmt.Errorf("unknown level %q", b)
}

// Default thresholds, in percent.
const (
	DefaultWarningPercent  = 80
	DefaultCriticalPercent = 90
)

// Thresholds set the utilisation levels, in percent. The zero value means
// the defaults (80 % and 90 %).
type Thresholds struct {
	Warning  float64 `json:"warning,omitempty"`
	Critical float64 `json:"critical,omitempty"`
}

// Level grades r: LevelNone when r has no utilisation.
func (t Thresholds) Level(r Resource) Level {
	u, ok := r.Utilization()
	if !ok {
		return LevelNone
	}
	warn, crit := t.Warning, t.Critical
	if warn == 0 {
		warn = DefaultWarningPercent
	}
	if crit == 0 {
		crit = DefaultCriticalPercent
	}
	switch {
	case u >= crit:
		return LevelCritical
	case u >= warn:
		return LevelWarning
	}
	return LevelOK
}

// Aggregate returns the rows of the default view (Detail unset).
func (r ResourceReport) Aggregate() []Resource {
	out := make([]Resource, 0, len(r.Resources))
	for _, res := range r.Resources {
		if !res.Detail {
			out = append(out, res)
		}
	}
	return out
}

// Find returns the first resource with that name and scope.
func (r ResourceReport) Find(name, scope string) (Resource, bool) {
	for _, res := range r.Resources {
		if res.Name == name && res.Scope == scope {
			return res, true
		}
	}
	return Resource{}, false
}

// Counter returns the value of the first counter with that name and scope.
func (r ResourceReport) Counter(name, scope string) (uint64, bool) {
	for _, c := range r.Counters {
		if c.Name == name && c.Scope == scope {
			return c.Value, true
		}
	}
	return 0, false
}
