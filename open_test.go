package fwplane

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/userspacebackend"
)

// fakeDP is a dataplane whose Apply answers with a set error: these tests
// exercise Open's choice between backends, not a datapath (the
// real-kernel tests in open_linux_test.go do that).
type fakeDP struct {
	mode     dataplane.Mode
	applyErr error
	closed   bool
	released bool
}

// Release makes fakeDP a dataplane.Releaser, as both real backends are.
func (f *fakeDP) Release() error { f.released = true; return nil }

func (f *fakeDP) Mode() dataplane.Mode { return f.mode }
func (f *fakeDP) Apply(context.Context, *dataplane.Config) (dataplane.ApplyResult, error) {
	if f.applyErr != nil {
		return dataplane.ApplyResult{}, f.applyErr
	}
	return dataplane.ApplyResult{Generation: 1}, nil
}
func (f *fakeDP) ResourceStats(context.Context) (dataplane.ResourceReport, error) {
	return dataplane.ResourceReport{}, nil
}
func (f *fakeDP) Close() error { f.closed = true; return nil }

func everythingHost() *capability.Host {
	h := &capability.Host{Probes: map[capability.ProbeName]capability.Result{}, MemoryBytes: 24 << 30}
	for name := range capability.MinKernel {
		h.Probes[name] = capability.ResultOf(name, nil)
	}
	return h
}

// fakeBackends are the real declarations (features, limits, memory cost)
// with open functions that build fakes and record that they ran.
func fakeBackends(opts *Options, applyErr map[dataplane.Mode]error, built *[]*fakeDP) []backend {
	bs := registered(opts)
	for i := range bs {
		mode := bs[i].decl.Mode
		bs[i].decl.Unavailable = "" // other OSes: the logic is the same
		bs[i].open = func(context.Context) (dataplane.DataPlane, error) {
			f := &fakeDP{mode: mode, applyErr: applyErr[mode]}
			*built = append(*built, f)
			return f, nil
		}
	}
	return bs
}

func smallConfig() *dataplane.Config {
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: "eth0", Zone: "in"}, {Name: "eth1", Zone: "out"}},
		Zones:      []dataplane.Zone{{Name: "in"}, {Name: "out"}},
		Policies:   []dataplane.Policy{{FromZone: "in", ToZone: "out", Action: dataplane.ActionAllow}},
	}
}

// TestOpenApplyRefusalFallsBack: a backend the gate admitted but whose
// Apply refuses the config (ErrNotSupported) is closed, the next fit
// backend runs, and the decision says why.
func TestOpenApplyRefusalFallsBack(t *testing.T) {
	refusal := &dataplane.NotSupportedError{What: "apply config to the eBPF backend",
		Reasons: []string{"port_mirroring[0].input: attached in generic mode"}}
	opts := &Options{Host: everythingHost()}
	var built []*fakeDP
	dp, res, err := open(context.Background(), smallConfig(), opts,
		fakeBackends(opts, map[dataplane.Mode]error{dataplane.ModeEBPF: refusal}, &built))
	if err != nil {
		t.Fatalf("Open: %v\n%s", err, res.Explain())
	}
	if dp.Mode() != dataplane.ModeUserspace || res.Mode != dataplane.ModeUserspace || !res.FellBack {
		t.Errorf("running %s, decision %q (fell back %v); want userspace after the refusal", dp.Mode(), res.Mode, res.FellBack)
	}
	if len(built) != 2 || !built[0].closed || built[1].closed {
		t.Errorf("built %d dataplanes; the refusing one must be closed, the running one not", len(built))
	}
	ex := res.Explain()
	for _, want := range []string{
		"backend: userspace (preference auto; fell back from the preferred backend)",
		"ebpf: not supported",
		"apply refused: port_mirroring[0].input: attached in generic mode",
		"chosen after Apply refused the config on the ebpf backend",
	} {
		if !strings.Contains(ex, want) {
			t.Errorf("Explain lacks %q:\n%s", want, ex)
		}
	}

	// Strict: no second try, the refusal is the error, nothing runs.
	built = nil
	opts = &Options{Host: everythingHost(), Backend: capability.PreferEBPF, Strict: true}
	_, res, err = open(context.Background(), smallConfig(), opts,
		fakeBackends(opts, map[dataplane.Mode]error{dataplane.ModeEBPF: refusal}, &built))
	if !errors.Is(err, dataplane.ErrNotSupported) || res.Mode != "" || len(built) != 1 || !built[0].closed {
		t.Errorf("strict: err %v, mode %q, %d built; want the refusal, no mode, one closed", err, res.Mode, len(built))
	}

	// Every backend refuses: one error with every reason.
	built = nil
	opts = &Options{Host: everythingHost()}
	_, res, err = open(context.Background(), smallConfig(), opts, fakeBackends(opts, map[dataplane.Mode]error{
		dataplane.ModeEBPF:      refusal,
		dataplane.ModeUserspace: &dataplane.NotSupportedError{Reasons: []string{"no room"}},
	}, &built))
	var nse *dataplane.NotSupportedError
	if !errors.As(err, &nse) || len(nse.Reasons) != 2 || res.Mode != "" || !built[0].closed || !built[1].closed {
		t.Errorf("all refuse: %v (mode %q); want both reasons, no mode, both closed", err, res.Mode)
	}

	// Any other Apply error is not a refusal: no fallback.
	built = nil
	boom := errors.New("map create: cannot allocate memory")
	_, _, err = open(context.Background(), smallConfig(), opts,
		fakeBackends(opts, map[dataplane.Mode]error{dataplane.ModeEBPF: boom}, &built))
	if !errors.Is(err, boom) || len(built) != 1 {
		t.Errorf("hard error: %v after %d builds; want it returned after one", err, len(built))
	}
}

func TestOptionsNetNSConflict(t *testing.T) {
	opts := &Options{Host: everythingHost(), NetNS: "/run/netns/a",
		EBPF: &ebpfbackend.Options{NetNS: "/run/netns/b"}, Userspace: &userspacebackend.Options{NetNS: "/run/netns/a"}}
	_, _, err := Open(context.Background(), smallConfig(), opts)
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 1 || ce.Problems[0].Field != "Options.EBPF.NetNS" {
		t.Errorf("Open = %v, want a ConfigError naming Options.EBPF.NetNS only", err)
	}
}
