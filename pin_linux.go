package fwplane

import (
	"fmt"
	"os"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/userspacebackend"
)

// PinnedMode reports which backend's dataplane is pinned in dir, if any.
func PinnedMode(dir string) (dataplane.Mode, bool) {
	if dir == "" {
		return "", false
	}
	if ebpfbackend.HasPinned(dir) {
		return dataplane.ModeEBPF, true
	}
	if userspacebackend.HasPinned(dir) {
		return dataplane.ModeUserspace, true
	}
	return "", false
}

// RemovePinned removes the dataplane pinned in dir, of either backend,
// that no process holds: an orphan left by a crash, a Release or
// `fwd --keep-dataplane`. Its programs are detached and its pins and the
// directory removed; the interfaces then carry none of its programs, so
// the kernel forwards them unfiltered until a dataplane runs again.
//
// Errors: dataplane.ErrPinnedInUse (naming the pid) when a live process
// holds it; an error wrapping os.ErrNotExist when dir holds no pinned
// dataplane; otherwise the unpin failures.
func RemovePinned(dir string) (dataplane.Mode, error) {
	mode, ok := PinnedMode(dir)
	if !ok {
		return "", fmt.Errorf("no pinned dataplane in %s: %w", dir, os.ErrNotExist)
	}
	var err error
	switch mode {
	case dataplane.ModeEBPF:
		err = ebpfbackend.RemovePinned(dir)
	default:
		err = userspacebackend.RemovePinned(dir)
	}
	return mode, err
}
