package fwplane

import (
	"context"
	"fmt"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
)

// Options tell Open how to choose and build the dataplane. Nil means: probe
// the host, prefer the eBPF backend, fall back to userspace when the eBPF
// backend cannot do what the config needs, work in the current network
// namespace.
type Options struct {
	// Backend is the preferred backend: auto (default), ebpf or userspace.
	Backend capability.Preference
	// Strict forbids falling back from the preferred backend.
	Strict bool
	// NetNS is the path of the network namespace to run in (e.g.
	// /var/run/netns/fw); "" = the current one.
	NetNS string
	// Host replaces the host probe (tests, or a cached probe). Nil probes.
	Host *capability.Host
}

// backend is a backend this binary can build.
type backend struct {
	decl capability.Backend
	open func(ctx context.Context, netns string) (dataplane.DataPlane, error)
}

// Backends returns the declarations of the backends this build knows, for
// capability.Decide and for tooling that explains decisions.
func Backends() []capability.Backend {
	bs := registered()
	out := make([]capability.Backend, len(bs))
	for i, b := range bs {
		out[i] = b.decl
	}
	return out
}

// Decide probes the host (unless opts.Host is set) and decides which
// backend would run cfg, without building anything.
func Decide(ctx context.Context, cfg *dataplane.Config, opts *Options) (capability.Decision, error) {
	if opts == nil {
		opts = &Options{}
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
	return capability.Decide(cfg, host, Backends(), capability.Request{Preference: opts.Backend, Strict: opts.Strict})
}

// Result says how Open chose the backend and what the first Apply did.
// The embedded Decision gives Mode, FellBack, Verdicts and Explain().
type Result struct {
	capability.Decision
	// Applied is the first Apply's result: generation 1 and its warnings
	// (for example a port-mirroring output that did not resolve).
	Applied dataplane.ApplyResult `json:"applied"`
}

// Open probes the host, decides which backend fits cfg, builds it and
// applies cfg: the one call an embedder needs. It returns the running
// dataplane and how it was chosen (log res.Explain() and res.Applied's
// warnings). On error nothing is left running; the decision is returned
// when one was made, so a refusal can be explained.
//
// Errors: a *dataplane.ConfigError for an invalid config; a
// *dataplane.NotSupportedError (errors.Is dataplane.ErrNotSupported) when no
// allowed backend can run the config on this host, listing every reason;
// otherwise the chosen backend's error, wrapped; a permission error names the
// capabilities the process lacks (CAP_BPF, CAP_NET_ADMIN, ...).
func Open(ctx context.Context, cfg *dataplane.Config, opts *Options) (dataplane.DataPlane, Result, error) {
	if opts == nil {
		opts = &Options{}
	}
	dec, err := Decide(ctx, cfg, opts)
	d := Result{Decision: dec}
	if err != nil {
		return nil, d, err
	}
	for _, b := range registered() {
		if b.decl.Mode != d.Mode {
			continue
		}
		dp, err := b.open(ctx, opts.NetNS)
		if err != nil {
			return nil, d, fmt.Errorf("open %s backend: %w", d.Mode, capability.ExplainPermission(err))
		}
		applied, err := dp.Apply(ctx, cfg)
		if err != nil {
			dp.Close()
			return nil, d, fmt.Errorf("apply config to %s backend: %w", d.Mode, capability.ExplainPermission(err))
		}
		d.Applied = applied
		return dp, d, nil
	}
	return nil, d, fmt.Errorf("open %s backend: %w", d.Mode, dataplane.ErrNotSupported)
}
