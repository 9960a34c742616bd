package dptest

import "github.com/fwplane/fwplane/dataplane"

// Want is what a backend must do with a config field.
type Want int

const (
	// Honoured: changing the field changes what the dataplane does; the
	// "config/fields" case (or the case named in Field.Case) observes it.
	Honoured Want = iota
	// Refused: Apply refuses a config that sets it, with
	// dataplane.ErrNotSupported naming the field: fail closed.
	Refused
	// Label: the field names something and has no behaviour of its own.
	Label
	// Ignored: the Config documentation says the field does not apply to
	// this backend.
	Ignored
	// Tuning: it tunes how the backend works, with no effect a report or
	// traffic can show.
	Tuning
	// Pending: not implemented yet; Field.Note names who is on it. Listed
	// so that it cannot be forgotten: the entry changes to Honoured with
	// its check when the work lands.
	Pending
)

func (w Want) String() string {
	return [...]string{"honoured", "refused", "label", "ignored", "tuning", "pending"}[w]
}

// Field is one leaf of dataplane.Config (its JSON path, lists as "[]") and
// what each backend does with it; a backend missing from Want honours it.
// TestFieldsCoverConfig fails when a Config field has no entry.
type Field struct {
	Path string
	Want map[dataplane.Mode]Want
	// Case names the case that observes an honoured field, when it is not
	// "config/fields" itself.
	Case string
	Note string
}

// WantOn returns what mode must do with the field.
func (f Field) WantOn(mode dataplane.Mode) Want {
	if w, ok := f.Want[mode]; ok {
		return w
	}
	return Honoured
}

var (
	ebpfM = dataplane.ModeEBPF
	usM   = dataplane.ModeUserspace
)

func both(w Want) map[dataplane.Mode]Want { return map[dataplane.Mode]Want{ebpfM: w, usM: w} }

// natWant: both backends translate; the nat/* cases observe each field.
var natWant = both(Honoured)

// Fields is the table of every config field.
var Fields = []Field{
	{Path: "interfaces[].name"},
	{Path: "interfaces[].zone"},
	{Path: "interfaces[].attach", Want: map[dataplane.Mode]Want{usM: Refused},
		Note: "\"tc\": the userspace backend refuses it by design (its AF_XDP sockets need the XDP shim)"},
	{Path: "zones[].name", Want: both(Label), Note: "zones are referred to by name; behaviour comes from interfaces[].zone and the policies' zones"},
	{Path: "policies[].name", Want: both(Label), Note: "a policy's name is for people"},
	{Path: "policies[].from_zone"},
	{Path: "policies[].to_zone"},
	{Path: "policies[].sources"},
	{Path: "policies[].destinations"},
	{Path: "policies[].protocol"},
	{Path: "policies[].destination_ports"},
	{Path: "policies[].action"},
	{Path: "forwarding.routes[].destination", Want: both(Refused)},
	{Path: "forwarding.routes[].interface", Want: both(Refused)},
	{Path: "forwarding.routes[].gateway", Want: both(Refused)},
	{Path: "tables.sessions"},
	{Path: "tables.flow_cache", Want: map[dataplane.Mode]Want{ebpfM: Refused},
		Note: "eBPF: a fixed per-CPU cache (FW_FLOW_CACHE_SLOTS), refused unless it is that size"},
	{Path: "tables.neighbors", Want: map[dataplane.Mode]Want{ebpfM: Refused},
		Note: "eBPF: the kernel's neighbour table, sized by sysctl"},
	{Path: "timeouts.tcp"},
	{Path: "timeouts.udp"},
	{Path: "timeouts.icmp"},
	{Path: "timeouts.other"},
	{Path: "timeouts.tcp_opening", Case: "sessions/timeouts by state"},
	{Path: "timeouts.tcp_closing", Case: "sessions/timeouts by state"},
	{Path: "timeouts.tcp_closed", Case: "sessions/timeouts by state"},
	{Path: "timeouts.udp_unreplied", Case: "sessions/timeouts by state"},
	{Path: "timeouts.icmp_unreplied", Case: "sessions/timeouts by state"},
	{Path: "timeouts.other_unreplied", Case: "sessions/timeouts by state"},
	{Path: "timeouts.early_aging_factor", Case: "sessions/early aging"},
	{Path: "sessions.tcp_pickup", Case: "sessions/tcp syn check and pickup"},
	{Path: "sessions.keep_on_policy_change", Case: "sessions/policy change"},
	{Path: "port_mirroring[].input", Case: "mirror/clones"},
	{Path: "port_mirroring[].output", Case: "mirror/clones"},
	{Path: "port_mirroring[].rate", Case: "mirror/clones"},
	{Path: "userspace.frames_per_binding", Want: map[dataplane.Mode]Want{ebpfM: Ignored}, Note: userspaceOnly},
	{Path: "userspace.ring_size", Want: map[dataplane.Mode]Want{ebpfM: Ignored}, Note: userspaceOnly},
	{Path: "userspace.queues", Want: map[dataplane.Mode]Want{ebpfM: Refused}, Note: "eBPF: no per-queue bindings (queue_selection)"},
	{Path: "userspace.session_shards", Want: map[dataplane.Mode]Want{ebpfM: Ignored}, Note: userspaceOnly},
	{Path: "userspace.batch_size", Want: map[dataplane.Mode]Want{ebpfM: Ignored, usM: Tuning},
		Note: "frames a userspace worker takes from a ring at once: the eBPF backend ignores it (dataplane.UserspaceOpts), and no report shows it"},
	{Path: "nat[].name", Want: natWant, Case: "nat/masquerade"},
	{Path: "nat[].type", Want: natWant, Case: "nat/port forwarding"},
	{Path: "nat[].from_zone", Want: natWant, Case: "nat/rule match"},
	{Path: "nat[].to_zone", Want: natWant, Case: "nat/rule match"},
	{Path: "nat[].sources", Want: natWant, Case: "nat/rule match"},
	{Path: "nat[].protocol", Want: natWant, Case: "nat/rule match"},
	{Path: "nat[].masquerade", Want: natWant, Case: "nat/masquerade"},
	{Path: "nat[].pool", Want: natWant, Case: "nat/pool exhaustion"},
	{Path: "nat[].ports", Want: natWant, Case: "nat/pool exhaustion"},
	{Path: "nat[].destination", Want: natWant, Case: "nat/port forwarding"},
	{Path: "nat[].destination_ports", Want: natWant, Case: "nat/port forwarding"},
	{Path: "nat[].translate_to", Want: natWant, Case: "nat/port forwarding"},
	{Path: "nat[].translate_port", Want: natWant, Case: "nat/port forwarding"},
}

const userspaceOnly = "dataplane.UserspaceOpts: sizes the userspace backend's own resources, changes no network behaviour; the eBPF backend ignores it"
