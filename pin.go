package fwplane

import (
	"fmt"
	"path/filepath"
	"strings"
)

// DefaultPinRoot is the bpffs directory under which pinned dataplanes are
// named: PinDirFor(name) is DefaultPinRoot/name.
const DefaultPinRoot = "/sys/fs/bpf/fwplane"

// PinDirFor is the pin directory of the dataplane called name (what
// `fwd --name NAME` pins under). A name is one path element: no "/", not
// "." or "..", not empty.
func PinDirFor(name string) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return "", fmt.Errorf("dataplane name %q: want one path element (letters, digits, '-', '_', '.')", name)
	}
	return filepath.Join(DefaultPinRoot, name), nil
}
