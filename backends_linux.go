package fwplane

import (
	"context"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/userspacebackend"
)

func registered(opts *Options) []backend {
	return []backend{
		{
			decl: capability.Backend{
				Mode:     dataplane.ModeEBPF,
				Features: ebpfbackend.Supported(),
				Requires: []capability.ProbeName{capability.ProbeBPFSyscall, capability.ProbeXDPProgram,
					capability.ProbeXDPLink, capability.ProbeFIBLookup, capability.ProbeDevMap, capability.ProbeBPFTimer},
				Limits: ebpfbackend.Limits(),
				Memory: func(cfg *dataplane.Config, _ *capability.Host) (dataplane.MemoryCost, error) {
					return ebpfbackend.MemoryCost(cfg)
				},
				AttachModes: true,
			},
			open: func(ctx context.Context) (dataplane.DataPlane, error) {
				o := ebpfbackend.Options{}
				if opts.EBPF != nil {
					o = *opts.EBPF
				}
				o.NetNS, o.PinDir = opts.NetNS, opts.PinDir
				return ebpfbackend.New(ctx, &o)
			},
		},
		{
			decl: capability.Backend{
				Mode:     dataplane.ModeUserspace,
				Features: userspacebackend.Supported(),
				Requires: []capability.ProbeName{capability.ProbeBPFSyscall, capability.ProbeXDPProgram,
					capability.ProbeXDPLink, capability.ProbeXSKMap, capability.ProbeAFXDPSocket},
				Limits: userspacebackend.Limits(),
				Memory: func(cfg *dataplane.Config, h *capability.Host) (dataplane.MemoryCost, error) {
					queues := func(name string) int {
						if h == nil {
							return 1
						}
						return h.Interfaces[name].RXQueues
					}
					return userspacebackend.MemoryCost(cfg, opts.Userspace, queues), nil
				},
			},
			open: func(ctx context.Context) (dataplane.DataPlane, error) {
				o := userspacebackend.Options{}
				if opts.Userspace != nil {
					o = *opts.Userspace
				}
				o.NetNS, o.PinDir = opts.NetNS, opts.PinDir
				return userspacebackend.New(ctx, &o)
			},
		},
	}
}
