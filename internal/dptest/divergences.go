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
var Divergences = []Divergence{}

// divergence returns the entry for a case on a backend.
func divergence(name string, mode dataplane.Mode) (Divergence, bool) {
	for _, d := range Divergences {
		if d.Case == name && d.Mode == mode {
			return d, true
		}
	}
	return Divergence{}, false
}
