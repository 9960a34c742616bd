package capability

import (
	"fmt"
	"strings"

	"github.com/fwplane/fwplane/dataplane"
)

// Preference is the caller's choice of backend.
type Preference string

const (
	PreferAuto      Preference = "auto"
	PreferEBPF      Preference = "ebpf"
	PreferUserspace Preference = "userspace"
)

// ParsePreference parses "auto", "ebpf" or "userspace" ("" = auto).
func ParsePreference(s string) (Preference, error) {
	switch Preference(s) {
	case "", PreferAuto:
		return PreferAuto, nil
	case PreferEBPF, PreferUserspace:
		return Preference(s), nil
	}
	return "", fmt.Errorf("backend preference %q: want auto, ebpf or userspace", s)
}

// Backend is what a backend declares it can do. Backends export their own
// (ebpfbackend.Support, userspacebackend.Support); this package never
// imports a backend.
type Backend struct {
	Mode dataplane.Mode `json:"mode"`
	// Features the backend implements and has tested.
	Features []dataplane.Feature `json:"features"`
	// Requires lists the host probes the backend cannot run without.
	Requires []ProbeName `json:"requires"`
	// Limits the backend declares; a config beyond them is refused with
	// the figures (see limits.go).
	Limits dataplane.Limits `json:"limits"`
	// Memory, when set, computes what a config would make the backend
	// allocate; a cost over the request's budget is refused.
	Memory MemoryFunc `json:"-"`
	// NeedsInterfaceFeatures lists XDP features every managed interface
	// must advertise (when the kernel advertises them at all).
	NeedsInterfaceFeatures []string `json:"needs_interface_features,omitempty"`
	// Unavailable, when set, says why the backend cannot be built at all
	// in this binary.
	Unavailable string `json:"unavailable,omitempty"`
	// AttachModes: the backend attaches XDP or TC per interface, as
	// ChooseAttach decides (the eBPF backend).
	AttachModes bool `json:"attach_modes,omitempty"`
}

// Request is how the caller wants the decision made.
type Request struct {
	Preference Preference `json:"preference"`
	// Strict forbids falling back from a named backend to another.
	Strict bool `json:"strict"`
	// MemoryBudget bounds what the config may make a backend allocate, in
	// bytes; 0 means DefaultMemoryShare of the host's memory.
	MemoryBudget uint64 `json:"memory_budget,omitempty"`
}

// Verdict is one backend's fitness for the config on the host.
type Verdict struct {
	Mode      dataplane.Mode `json:"mode"`
	Supported bool           `json:"supported"`
	// Reasons why not, each naming the feature or probe.
	Reasons []string `json:"reasons,omitempty"`
	// Notes that do not block: inconclusive probes, fallbacks.
	Notes []string `json:"notes,omitempty"`
	// Considered is false for backends the request excluded.
	Considered bool `json:"considered"`
	// Interfaces says how a backend that attaches per interface would
	// attach to each one, and why.
	Interfaces []AttachChoice `json:"interfaces,omitempty"`
}

// Decision is the outcome of Decide.
type Decision struct {
	// Mode is the chosen backend; empty when none fits.
	Mode     dataplane.Mode      `json:"mode,omitempty"`
	Request  Request             `json:"request"`
	Features []dataplane.Feature `json:"features"`
	Verdicts []Verdict           `json:"verdicts"`
	// FellBack is set when the preferred backend was not chosen.
	FellBack bool `json:"fell_back,omitempty"`
}

// Verdict returns the verdict for a mode.
func (d Decision) Verdict(m dataplane.Mode) (Verdict, bool) {
	for _, v := range d.Verdicts {
		if v.Mode == m {
			return v, true
		}
	}
	return Verdict{}, false
}

// Evaluate says whether backend b can run cfg on host h. It is the part of
// Decide that looks at one backend.
func Evaluate(cfg *dataplane.Config, h *Host, b Backend) Verdict {
	v := Verdict{Mode: b.Mode, Considered: true}
	if b.Unavailable != "" {
		v.Reasons = append(v.Reasons, "backend unavailable: "+b.Unavailable)
	}
	supported := make(map[dataplane.Feature]bool, len(b.Features))
	for _, f := range b.Features {
		supported[f] = true
	}
	for _, f := range cfg.Features() {
		if !supported[f] {
			v.Reasons = append(v.Reasons, fmt.Sprintf("config needs %s: not supported by the %s backend", f, b.Mode))
		}
	}
	v.Reasons = append(v.Reasons, checkLimits(cfg, b)...)
	for _, p := range b.Requires {
		r := h.Status(p)
		switch r.Status {
		case NotSupported:
			v.Reasons = append(v.Reasons, fmt.Sprintf("host lacks %s (needs kernel >= %s): %s", p, r.MinKernel, r.Detail))
		case Inconclusive:
			v.Notes = append(v.Notes, fmt.Sprintf("probe %s inconclusive (%s): assuming available", p, r.Detail))
		}
	}
	for i, it := range cfg.Interfaces {
		caps, probed := h.Interfaces[it.Name]
		if !probed {
			continue
		}
		if !caps.Exists {
			// Apply reports a missing interface as an error; the gate
			// only notes it so the decision stays about capabilities.
			v.Notes = append(v.Notes, fmt.Sprintf("interfaces[%d] %q not found on the host", i, it.Name))
			continue
		}
		if caps.Features == nil {
			continue
		}
		for _, need := range b.NeedsInterfaceFeatures {
			if !caps.Has(need) {
				v.Reasons = append(v.Reasons, fmt.Sprintf("interface %s does not advertise XDP feature %s", it.Name, need))
			}
		}
		if b.Mode == dataplane.ModeUserspace && !caps.Has("xsk-zerocopy") {
			v.Notes = append(v.Notes, fmt.Sprintf("interface %s has no AF_XDP zero-copy: copy mode", it.Name))
		}
	}
	if b.AttachModes {
		v.Interfaces = AttachChoices(cfg, h)
		for i, c := range v.Interfaces {
			if c.Refused {
				v.Reasons = append(v.Reasons, fmt.Sprintf("interfaces[%d].attach: %s", i, c))
			}
		}
	}
	v.Supported = len(v.Reasons) == 0
	return v
}

// order returns the modes to try, best first. Auto prefers eBPF: in-kernel
// forwarding measured faster than AF_XDP copy mode here, and the userspace
// backend takes over where eBPF lacks a feature.
func order(req Request) []dataplane.Mode {
	switch req.Preference {
	case PreferEBPF:
		if req.Strict {
			return []dataplane.Mode{dataplane.ModeEBPF}
		}
		return []dataplane.Mode{dataplane.ModeEBPF, dataplane.ModeUserspace}
	case PreferUserspace:
		if req.Strict {
			return []dataplane.Mode{dataplane.ModeUserspace}
		}
		return []dataplane.Mode{dataplane.ModeUserspace, dataplane.ModeEBPF}
	}
	return []dataplane.Mode{dataplane.ModeEBPF, dataplane.ModeUserspace}
}

// Decide picks a backend for cfg on host h among backends. On success the
// Decision names the mode; otherwise the error is a
// *dataplane.NotSupportedError (matching dataplane.ErrNotSupported) with
// every reason of every considered backend, and the Decision still explains
// itself. An invalid config returns its *dataplane.ConfigError.
func Decide(cfg *dataplane.Config, h *Host, backends []Backend, req Request) (Decision, error) {
	if req.Preference == "" {
		req.Preference = PreferAuto
	}
	if _, err := ParsePreference(string(req.Preference)); err != nil {
		return Decision{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Decision{}, err
	}
	d := Decision{Request: req, Features: cfg.Features()}
	byMode := make(map[dataplane.Mode]Backend, len(backends))
	for _, b := range backends {
		byMode[b.Mode] = b
	}
	considered := order(req)
	for i, m := range considered {
		b, ok := byMode[m]
		var v Verdict
		if ok {
			v = Evaluate(cfg, h, b)
			checkMemory(&v, cfg, h, b, req)
			v.Supported = len(v.Reasons) == 0
		} else {
			v = Verdict{Mode: m, Considered: true, Reasons: []string{"backend not registered"}}
		}
		d.Verdicts = append(d.Verdicts, v)
		if v.Supported && d.Mode == "" {
			d.Mode = m
			d.FellBack = i > 0
		}
	}
	// Excluded backends are still evaluated, so the explanation can say
	// what strict mode ruled out.
	for _, b := range backends {
		if !contains(considered, b.Mode) {
			v := Evaluate(cfg, h, b)
			checkMemory(&v, cfg, h, b, req)
			v.Supported = len(v.Reasons) == 0
			v.Considered = false
			v.Notes = append(v.Notes, "not considered: strict preference for "+string(req.Preference))
			d.Verdicts = append(d.Verdicts, v)
		}
	}
	if d.Mode != "" {
		return d, nil
	}
	nse := &dataplane.NotSupportedError{What: "choose backend (" + string(req.Preference) + strictWord(req.Strict) + ")"}
	for _, v := range d.Verdicts {
		if !v.Considered {
			continue
		}
		for _, r := range v.Reasons {
			nse.Reasons = append(nse.Reasons, string(v.Mode)+": "+r)
		}
	}
	return d, nse
}

func strictWord(strict bool) string {
	if strict {
		return ", strict"
	}
	return ""
}

func contains(ms []dataplane.Mode, m dataplane.Mode) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

// Explain renders the decision in words, for logs and `fwctl show
// capability`.
func (d Decision) Explain() string {
	var b strings.Builder
	if d.Mode != "" {
		fmt.Fprintf(&b, "backend: %s (preference %s%s", d.Mode, d.Request.Preference, strictWord(d.Request.Strict))
		if d.FellBack {
			b.WriteString("; fell back from the preferred backend")
		}
		b.WriteString(")\n")
	} else {
		fmt.Fprintf(&b, "backend: none fits (preference %s%s)\n", d.Request.Preference, strictWord(d.Request.Strict))
	}
	feats := make([]string, len(d.Features))
	for i, f := range d.Features {
		feats[i] = string(f)
	}
	fmt.Fprintf(&b, "config needs: %s\n", strings.Join(feats, ", "))
	for _, v := range d.Verdicts {
		state := "supported"
		if !v.Supported {
			state = "not supported"
		}
		if !v.Considered {
			state += ", not considered"
		}
		fmt.Fprintf(&b, "  %s: %s\n", v.Mode, state)
		for _, r := range v.Reasons {
			fmt.Fprintf(&b, "    - %s\n", r)
		}
		for _, c := range v.Interfaces {
			if !c.Refused {
				fmt.Fprintf(&b, "    attach %s\n", c)
			}
		}
		for _, n := range v.Notes {
			fmt.Fprintf(&b, "    note: %s\n", n)
		}
	}
	return b.String()
}
