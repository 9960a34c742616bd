package fwplane

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/userspacebackend"
)

// Options tell Open how to choose and build the dataplane: how this
// process runs the config, as opposed to the config itself, which is the
// network's desired state (docs/architecture.md, "Config or options").
// Nil means: probe the host, prefer the eBPF backend, fall back to
// userspace when the eBPF backend cannot do what the config needs, work in
// the current network namespace, each backend with its defaults, a memory
// budget of capability.DefaultMemoryShare of the host's memory.
type Options struct {
	// Backend is the preferred backend: auto (default), ebpf or userspace.
	Backend capability.Preference
	// Strict forbids falling back from the preferred backend, both when
	// choosing and when the chosen backend's Apply refuses the config.
	Strict bool
	// NetNS is the path of the network namespace to run in (e.g.
	// /var/run/netns/fw); "" = the current one. It is the namespace of
	// whichever backend runs: leave the backends' own NetNS empty.
	NetNS string
	// Host replaces the host probe (tests, or a cached probe). Nil probes.
	Host *capability.Host
	// MemoryBudget bounds what the config may make the chosen backend
	// allocate, in bytes (session tables, UMEM, ...): a backend whose cost
	// exceeds it is refused before anything is allocated, with the
	// figures. 0 means capability.DefaultMemoryShare of the host's memory.
	MemoryBudget uint64

	// PinDir, when set, pins the dataplane under this bpffs directory
	// (PinDirFor(name) gives the conventional one) so that it outlives
	// the process: the eBPF backend keeps enforcing the last config with
	// its sessions, the userspace backend's shims drop transit traffic
	// (fail closed). It is the pin directory of whichever backend runs:
	// leave the backends' own PinDir empty. When the directory already
	// holds a pinned dataplane, Open adopts it: its backend is the one
	// that runs (a preference for the other one is refused, naming the
	// directory), and if the config cannot be applied to it, it is
	// released, still enforcing its previous config, never removed.
	// Close removes it; dataplane.Releaser's Release leaves it. Empty (the
	// default) pins nothing: the dataplane leaves with the process, and
	// the kernel then forwards unfiltered. See docs/failure-model.md.
	PinDir string

	// EBPF and Userspace are the backends' own options, used when that
	// backend runs; nil means its defaults. Their NetNS and PinDir must be
	// empty or equal to NetNS and PinDir.
	EBPF      *ebpfbackend.Options
	Userspace *userspacebackend.Options
}

// backend is a backend this binary can build.
type backend struct {
	decl capability.Backend
	open func(ctx context.Context) (dataplane.DataPlane, error)
}

// Backends returns the declarations of the backends this build knows
// (their features, required probes, limits and memory cost, with default
// options), for capability.Decide and for tooling that explains decisions.
func Backends() []capability.Backend {
	return declarations(registered(&Options{}))
}

func declarations(bs []backend) []capability.Backend {
	out := make([]capability.Backend, len(bs))
	for i, b := range bs {
		out[i] = b.decl
	}
	return out
}

// check refuses backend options that contradict Options, naming the
// field.
func (o *Options) check() error {
	var problems []dataplane.Problem
	if o.EBPF != nil && o.EBPF.NetNS != "" && o.EBPF.NetNS != o.NetNS {
		problems = append(problems, dataplane.Problem{Field: "Options.EBPF.NetNS",
			Message: fmt.Sprintf("%q differs from Options.NetNS %q: set Options.NetNS only", o.EBPF.NetNS, o.NetNS)})
	}
	if o.Userspace != nil && o.Userspace.NetNS != "" && o.Userspace.NetNS != o.NetNS {
		problems = append(problems, dataplane.Problem{Field: "Options.Userspace.NetNS",
			Message: fmt.Sprintf("%q differs from Options.NetNS %q: set Options.NetNS only", o.Userspace.NetNS, o.NetNS)})
	}
	if o.EBPF != nil && o.EBPF.PinDir != "" && o.EBPF.PinDir != o.PinDir {
		problems = append(problems, dataplane.Problem{Field: "Options.EBPF.PinDir",
			Message: fmt.Sprintf("%q differs from Options.PinDir %q: set Options.PinDir only", o.EBPF.PinDir, o.PinDir)})
	}
	if o.Userspace != nil && o.Userspace.PinDir != "" && o.Userspace.PinDir != o.PinDir {
		problems = append(problems, dataplane.Problem{Field: "Options.Userspace.PinDir",
			Message: fmt.Sprintf("%q differs from Options.PinDir %q: set Options.PinDir only", o.Userspace.PinDir, o.PinDir)})
	}
	if len(problems) > 0 {
		return fmt.Errorf("fwplane options: %w", &dataplane.ConfigError{Problems: problems})
	}
	return nil
}

// pinned applies a dataplane pinned in PinDir to the request: its
// backend is the one that may run (strictly: the other cannot attach over
// it). It returns the mode found, or an error when the preference names
// the other backend.
func (o *Options) pinned() (dataplane.Mode, error) {
	if o.PinDir == "" {
		return "", nil
	}
	mode, ok := PinnedMode(o.PinDir)
	if !ok {
		return "", nil
	}
	if o.Backend != capability.PreferAuto && o.Backend != "" && string(o.Backend) != string(mode) {
		return mode, fmt.Errorf("%s holds a pinned %s dataplane, which the %s backend cannot adopt: run the %s backend, or remove it first (fwd --remove NAME, or fwplane.RemovePinned): %w",
			o.PinDir, mode, o.Backend, mode, dataplane.ErrNotSupported)
	}
	return mode, nil
}

// Decide probes the host (unless opts.Host is set) and decides which
// backend would run cfg, without building anything.
func Decide(ctx context.Context, cfg *dataplane.Config, opts *Options) (capability.Decision, error) {
	if opts == nil {
		opts = &Options{}
	}
	return decide(ctx, cfg, opts, registered(opts))
}

func decide(ctx context.Context, cfg *dataplane.Config, opts *Options, bs []backend) (capability.Decision, error) {
	if err := opts.check(); err != nil {
		return capability.Decision{}, err
	}
	pinnedMode, err := opts.pinned()
	if err != nil {
		return capability.Decision{}, err
	}
	if pinnedMode != "" {
		o := *opts
		o.Backend, o.Strict = capability.Preference(pinnedMode), true
		opts = &o
	}
	if err := cfg.Validate(); err != nil {
		return capability.Decision{}, err
	}
	host := opts.Host
	if host == nil {
		names := make([]string, len(cfg.Interfaces))
		for i, it := range cfg.Interfaces {
			names[i] = it.Name
		}
		var err error
		host, err = capability.ProbeHost(ctx, &capability.ProbeOptions{NetNS: opts.NetNS, Interfaces: names})
		if err != nil {
			return capability.Decision{}, fmt.Errorf("probe host: %w", err)
		}
	}
	return capability.Decide(cfg, host, declarations(bs), capability.Request{
		Preference: opts.Backend, Strict: opts.Strict, MemoryBudget: opts.MemoryBudget})
}

// Result says how Open chose the backend and what the first Apply did.
// The embedded Decision gives Mode, FellBack, Verdicts and Explain(); a
// backend whose Apply refused the config is in Verdicts as not supported,
// with the refusal's reasons.
type Result struct {
	capability.Decision
	// Applied is the first Apply's result: generation 1 and its warnings
	// (for example a port-mirroring output that did not resolve); for an
	// adopted dataplane, the generation after the one it was running.
	Applied dataplane.ApplyResult `json:"applied"`
	// Adopted is true when Options.PinDir held a pinned dataplane, which
	// Open took over (see Options.PinDir).
	Adopted bool `json:"adopted,omitempty"`
}

// Open probes the host, decides which backend fits cfg, builds it and
// applies cfg: the one call an embedder needs. It returns the running
// dataplane and how it was chosen (log res.Explain() and res.Applied's
// warnings). On error nothing is left running; the decision is returned
// when one was made, so a refusal can be explained.
//
// When the chosen backend's Apply refuses the config as not supported
// (something the gate could not see from declarations, e.g. a mirror input
// the kernel attaches only in generic mode) and Strict is not set, Open
// closes it and tries the next backend the decision found fit; the
// refusal's reasons become that backend's verdict, and FellBack is set.
//
// Errors: a *dataplane.ConfigError for an invalid config or contradictory
// options; a *dataplane.NotSupportedError (errors.Is
// dataplane.ErrNotSupported) when no allowed backend can run the config on
// this host, listing every reason; otherwise the chosen backend's error,
// wrapped; a permission error names the capabilities the process lacks
// (CAP_BPF, CAP_NET_ADMIN, ...).
func Open(ctx context.Context, cfg *dataplane.Config, opts *Options) (dataplane.DataPlane, Result, error) {
	if opts == nil {
		opts = &Options{}
	}
	return open(ctx, cfg, opts, registered(opts))
}

func open(ctx context.Context, cfg *dataplane.Config, opts *Options, bs []backend) (dataplane.DataPlane, Result, error) {
	// Read before deciding: a pinned dataplane decides the backend, and
	// one whose new config fails is released, never removed.
	_, adopting := PinnedMode(opts.PinDir)
	dec, err := decide(ctx, cfg, opts, bs)
	res := Result{Decision: dec, Adopted: adopting}
	if err != nil {
		return nil, res, err
	}
	if opts.PinDir != "" {
		note := "pinned in " + opts.PinDir + ": outlives this process (a crash leaves it enforcing)"
		if adopting {
			note = "adopts the dataplane pinned in " + opts.PinDir
		}
		for i := range res.Verdicts {
			if res.Verdicts[i].Considered {
				res.Verdicts[i].Notes = append(res.Verdicts[i].Notes, note)
			}
		}
	}
	byMode := map[dataplane.Mode]backend{}
	for _, b := range bs {
		byMode[b.decl.Mode] = b
	}
	// The candidates: the chosen mode, then (unless strict) every other
	// considered backend the gate found fit, in the decision's order.
	var refused []string
	for i := range res.Verdicts {
		v := &res.Verdicts[i]
		if !v.Considered || !v.Supported {
			continue
		}
		b, ok := byMode[v.Mode]
		if !ok {
			continue
		}
		dp, applied, err := openApply(ctx, b, cfg, adopting)
		if err == nil {
			if v.Mode != res.Mode {
				v.Notes = append(v.Notes, "chosen after Apply refused the config on the "+strings.Join(refused, ", ")+" backend")
				res.Mode, res.FellBack = v.Mode, true
			}
			res.Applied = applied
			return dp, res, nil
		}
		if !errors.Is(err, dataplane.ErrNotSupported) {
			if v.Mode != res.Mode {
				res.Mode, res.FellBack = v.Mode, true
			}
			return nil, res, err
		}
		// The backend refused what the gate admitted: record why, and try
		// the next one unless strict.
		v.Supported = false
		var nse *dataplane.NotSupportedError
		if errors.As(err, &nse) && len(nse.Reasons) > 0 {
			for _, r := range nse.Reasons {
				v.Reasons = append(v.Reasons, "apply refused: "+r)
			}
		} else {
			v.Reasons = append(v.Reasons, "apply refused: "+err.Error())
		}
		if opts.Strict {
			res.Mode = ""
			return nil, res, err
		}
		refused = append(refused, string(v.Mode))
	}
	res.Mode, res.FellBack = "", false
	all := &dataplane.NotSupportedError{What: "apply config (" + string(res.Request.Preference) + ")"}
	for _, v := range res.Verdicts {
		if !v.Considered {
			continue
		}
		for _, r := range v.Reasons {
			all.Reasons = append(all.Reasons, string(v.Mode)+": "+r)
		}
	}
	return nil, res, all
}

// openApply builds one backend and applies cfg; on error nothing of it is
// left, except an adopted pinned dataplane, which is released: it goes on
// enforcing the config it had.
func openApply(ctx context.Context, b backend, cfg *dataplane.Config, adopted bool) (dataplane.DataPlane, dataplane.ApplyResult, error) {
	mode := b.decl.Mode
	dp, err := b.open(ctx)
	if err != nil {
		return nil, dataplane.ApplyResult{}, fmt.Errorf("open %s backend: %w", mode, capability.ExplainPermission(err))
	}
	applied, err := dp.Apply(ctx, cfg)
	if err != nil {
		if r, ok := dp.(dataplane.Releaser); ok && adopted {
			r.Release()
			return nil, dataplane.ApplyResult{}, fmt.Errorf("apply config to the adopted %s dataplane (released: it keeps its previous config): %w", mode, capability.ExplainPermission(err))
		}
		dp.Close()
		return nil, dataplane.ApplyResult{}, fmt.Errorf("apply config to %s backend: %w", mode, capability.ExplainPermission(err))
	}
	return dp, applied, nil
}
