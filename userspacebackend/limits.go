package userspacebackend

import (
	"math"

	"github.com/fwplane/fwplane/dataplane"
)

// maxSessions bounds tables.sessions: the table is preallocated, and 2^24
// sessions (about 1.5 GiB of slots and index) is a sane ceiling for one
// process; the capability gate's memory budget may refuse less.
const maxSessions = 1 << 24

// Limits returns the most this backend can program. The capability gate
// refuses a config beyond them (or beyond its memory budget: see
// MemoryCost) before anything is built, and Apply refuses it with the same
// reasons. Policies have no count limit: the matcher loops over lists.
func Limits() dataplane.Limits {
	return dataplane.Limits{
		Zones:    math.MaxInt16, // zone indexes are int16 in the compiled matcher
		Sessions: dataplane.TableLimit{Max: maxSessions},
	}
}
