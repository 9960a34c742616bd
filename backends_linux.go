package fwplane

import (
	"context"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
)

func registered() []backend {
	return []backend{
		{
			decl: capability.Backend{
				Mode:     dataplane.ModeEBPF,
				Features: ebpfbackend.Supported(),
				Requires: []capability.ProbeName{capability.ProbeBPFSyscall, capability.ProbeXDPProgram,
					capability.ProbeXDPLink, capability.ProbeFIBLookup, capability.ProbeDevMap, capability.ProbeLRUHash},
				MaxSessions: dataplane.MaxTableEntries,
			},
			open: func(ctx context.Context, netns string) (dataplane.DataPlane, error) {
				return ebpfbackend.New(ctx, &ebpfbackend.Options{NetNS: netns})
			},
		},
		{
			decl: capability.Backend{
				Mode:        dataplane.ModeUserspace,
				Unavailable: "the userspace AF_XDP backend is not part of this build yet",
			},
		},
	}
}
