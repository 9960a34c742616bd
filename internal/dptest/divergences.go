package dptest

import "github.com/fwplane/fwplane/dataplane"

// Divergence is a known difference between a backend and the contract a
// case checks. The case still runs on that backend: a failure is reported
// as a skip that names the divergence (never silently), and a pass fails
// the test, so the entry is removed in the change that fixes the backend.
type Divergence struct {
	Case  string
	Mode  dataplane.Mode
	Issue string
	Why   string
	// Intermittent marks a difference whose showing depends on timing
	// the case cannot fix (it showed in most runs): a run where the case
	// passes is logged, not failed. Remove the entry with the fix all the
	// same.
	Intermittent bool
}

// Divergences is the one list of known differences. Remove an entry when
// its fix lands (the suite fails until you do).
var Divergences = []Divergence{
	{Case: "sessions/tcp reopen", Mode: dataplane.ModeEBPF, Issue: "issue 15 (lead: bpf/xdp_fw.c)", Intermittent: true,
		Why: "a SYN that reopens a closed session's tuple within a second of the old connection's last packets: the new handshake's ACK and data are forwarded by the old connection's per-CPU flow cache entries, which skip state tracking, so the new session stays opening (until a packet takes the general path after the entry's lifetime; an idle connection then expires after tcp_opening). Reopening must invalidate the tuple's cache entries (or entries must carry the session's identity). Shows when the reconnect's ACK meets a live entry on the same CPU: most runs, not all"},
	{Case: "sessions/tcp syn check and pickup", Mode: dataplane.ModeEBPF, Issue: "issue 15 (lead: bpf/xdp_fw.c)",
		Why: "sess_assured is ESTABLISHED && REPLY, so a picked-up session becomes assured by any packet back, an RST or a FIN included (then an ACK flood answered by RSTs fills the table with sessions early drop may not evict); the userspace backend, like conntrack, assures it only on a reply that leaves it established"},
}

// divergence returns the entry for a case on a backend.
func divergence(name string, mode dataplane.Mode) (Divergence, bool) {
	for _, d := range Divergences {
		if d.Case == name && d.Mode == mode {
			return d, true
		}
	}
	return Divergence{}, false
}
