//go:build !linux

package fwplane

import (
	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/userspacebackend"
)

// Both backends need Linux (XDP, AF_XDP); elsewhere the gate explains that.
func registered(*Options) []backend {
	return []backend{
		{decl: capability.Backend{Mode: dataplane.ModeEBPF, Unavailable: "needs Linux", Limits: ebpfbackend.Limits()}},
		{decl: capability.Backend{Mode: dataplane.ModeUserspace, Unavailable: "needs Linux", Limits: userspacebackend.Limits()}},
	}
}
