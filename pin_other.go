//go:build !linux

package fwplane

import (
	"fmt"

	"github.com/fwplane/fwplane/dataplane"
)

// PinnedMode reports which backend's dataplane is pinned in dir: none
// outside Linux.
func PinnedMode(string) (dataplane.Mode, bool) { return "", false }

// RemovePinned needs Linux.
func RemovePinned(dir string) (dataplane.Mode, error) {
	return "", fmt.Errorf("remove pinned dataplane %s: needs Linux: %w", dir, dataplane.ErrNotSupported)
}
