//go:build !linux

package diagnose

import (
	"github.com/fwplane/fwplane/dataplane"
)

// ReadLinks needs Linux (netlink).
func ReadLinks(string) ([]Link, error) {
	return nil, &dataplane.NotSupportedError{What: "read interface statistics", Reasons: []string{"needs Linux (netlink)"}}
}
