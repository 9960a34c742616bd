package fwplane

import (
	"context"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/userspacebackend"
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
				AttachModes: true,
			},
			open: func(ctx context.Context, netns string) (dataplane.DataPlane, error) {
				return ebpfbackend.New(ctx, &ebpfbackend.Options{NetNS: netns})
			},
		},
		{
			decl: capability.Backend{
				Mode:     dataplane.ModeUserspace,
				Features: userspacebackend.Supported(),
				Requires: []capability.ProbeName{capability.ProbeBPFSyscall, capability.ProbeXDPProgram,
					capability.ProbeXDPLink, capability.ProbeXSKMap, capability.ProbeAFXDPSocket},
				// The session table is preallocated (88 bytes a slot):
				// 2^24 sessions is 1.5 GiB, a sane ceiling for one process.
				MaxSessions: 1 << 24,
			},
			open: func(ctx context.Context, netns string) (dataplane.DataPlane, error) {
				return userspacebackend.New(ctx, &userspacebackend.Options{NetNS: netns})
			},
		},
	}
}
