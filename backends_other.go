//go:build !linux

package fwplane

import (
	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
)

// Both backends need Linux (XDP, AF_XDP); elsewhere the gate explains that.
func registered() []backend {
	return []backend{
		{decl: capability.Backend{Mode: dataplane.ModeEBPF, Unavailable: "needs Linux"}},
		{decl: capability.Backend{Mode: dataplane.ModeUserspace, Unavailable: "needs Linux"}},
	}
}
