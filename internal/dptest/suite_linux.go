package dptest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
)

// Opener builds a dataplane of the backend under test working in the
// network namespace at netns, with nothing applied. The suite closes it.
type Opener func(ctx context.Context, netns string) (dataplane.DataPlane, error)

// Case is one conformance check, run on every backend.
type Case struct {
	// Name is "group/what", e.g. "icmp/ttl 1"; unique.
	Name string
	// Config returns the config applied before Run; nil applies Base.
	Config func(e *Env) *dataplane.Config
	// Fresh runs the case on a dataplane of its own, opened for it and
	// closed after it: for what a running dataplane cannot change (table
	// sizes) and for exact counts no earlier case may disturb.
	Fresh bool
	// Run checks the backend through e; failing t fails the case.
	Run func(t testing.TB, e *Env)
	// Needs are the features the case checks (NAT, say): on a backend
	// that does not declare one of them the case is skipped, saying so;
	// on one that does, it runs and fails like any other. See Run.
	Needs []dataplane.Feature
}

var (
	registryMu sync.Mutex
	registry   = map[string]Case{}
)

// Register adds cases to the suite; call it from an init function in the
// file that defines them. A duplicate name panics.
func Register(cs ...Case) {
	registryMu.Lock()
	defer registryMu.Unlock()
	for _, c := range cs {
		if _, dup := registry[c.Name]; dup {
			panic("dptest: duplicate case " + c.Name)
		}
		registry[c.Name] = c
	}
}

// Cases returns every registered case, in name order.
func Cases() []Case {
	registryMu.Lock()
	defer registryMu.Unlock()
	out := make([]Case, 0, len(registry))
	for _, c := range registry {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Env is what a case runs against: the lab, the dataplane under test and
// helpers. It is used by one case at a time.
type Env struct {
	Mode dataplane.Mode
	Lab  *Lab
	// DP is the dataplane under test; Applied the config it runs.
	DP      dataplane.DataPlane
	Applied *dataplane.Config

	open  Opener
	ports *atomic.Uint32
	// supported is what the backend declares (Run's supported); nil when
	// its test did not say.
	supported []dataplane.Feature
}

// Base is the config cases start from: zone "clients" (the client link)
// may reach zone "servers" (the server link) on TCP PortTCP and UDP
// PortUDP; nothing is allowed the other way (replies ride the sessions).
func Base(l *Lab) *dataplane.Config {
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: l.FwClientIf, Zone: "clients"}, {Name: l.FwServerIf, Zone: "servers"}},
		Zones:      []dataplane.Zone{{Name: "clients"}, {Name: "servers"}},
		Policies: []dataplane.Policy{
			{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoTCP, DestinationPorts: []dataplane.PortRange{{First: PortTCP, Last: PortTCP}}, Action: dataplane.ActionAllow},
			{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP, DestinationPorts: []dataplane.PortRange{{First: PortUDP, Last: PortUDP}}, Action: dataplane.ActionAllow},
		},
	}
}

// Port returns a source port no earlier probe of this run used, so a new
// probe is a new flow, never an old session's.
func (e *Env) Port() uint16 { return uint16(e.ports.Add(1)) }

// Apply applies cfg, failing the case on error.
func (e *Env) Apply(t testing.TB, cfg *dataplane.Config) dataplane.ApplyResult {
	t.Helper()
	res, err := e.DP.Apply(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	e.Applied = cfg
	return res
}

// Reopen closes the dataplane and opens a fresh one running cfg; the
// suite reopens its shared dataplane for the next case.
func (e *Env) Reopen(t testing.TB, cfg *dataplane.Config) {
	t.Helper()
	if e.DP != nil {
		if err := e.DP.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		e.DP = nil
	}
	dp, err := e.open(context.Background(), e.Lab.Firewall.Path)
	if err != nil {
		t.Fatalf("open %s backend: %v", e.Mode, err)
	}
	e.DP = dp
	e.Apply(t, cfg)
}

// Report reads a resource report, failing the case on error.
func (e *Env) Report(t testing.TB) dataplane.ResourceReport {
	t.Helper()
	rep, err := e.DP.ResourceStats(context.Background())
	if err != nil {
		t.Fatalf("ResourceStats: %v", err)
	}
	return rep
}

// Counters reads global counters by name (absent ones are 0).
func (e *Env) Counters(t testing.TB, names ...string) map[string]uint64 {
	t.Helper()
	rep := e.Report(t)
	out := make(map[string]uint64, len(names))
	for _, n := range names {
		out[n], _ = rep.Counter(n, "global")
	}
	return out
}

// DeltaAtLeast polls the named counters until each has risen by at least
// its minimum over before, or until the deadline, and returns the last
// deltas. A backend may publish counters a moment after the packet that
// moved them (the userspace workers flush per batch), so a test reads
// them as a condition with a deadline, never right after the traffic.
func (e *Env) DeltaAtLeast(t testing.TB, before map[string]uint64, min map[string]uint64) map[string]uint64 {
	t.Helper()
	names := make([]string, 0, len(min))
	for n := range min {
		names = append(names, n)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		d := Delta(before, e.Counters(t, names...))
		done := true
		for n, m := range min {
			if d[n] < m {
				done = false
			}
		}
		if done || time.Now().After(deadline) {
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Delta returns after-before for every name of after.
func Delta(before, after map[string]uint64) map[string]uint64 {
	d := make(map[string]uint64, len(after))
	for k, v := range after {
		d[k] = v - before[k]
	}
	return d
}

// Sessions lists the dataplane's live sessions (it must be a
// dataplane.SessionLister: both backends are).
func (e *Env) Sessions(t testing.TB) []dataplane.Session {
	t.Helper()
	sl, ok := e.DP.(dataplane.SessionLister)
	if !ok {
		t.Fatalf("%s backend does not list sessions", e.Mode)
	}
	list, _, err := sl.Sessions(context.Background(), 1<<20)
	if err != nil {
		t.Fatalf("Sessions: %v", err)
	}
	return list
}

// Flow is one probe of a table: it passes when Run's outcome is Want.
type Flow struct {
	Name string
	Want Outcome
	Run  func() Probe
}

// Expect runs the flows concurrently (a silent probe costs its timeout)
// and reports every one whose outcome differs.
func Expect(t testing.TB, flows ...Flow) {
	t.Helper()
	got := make([]Probe, len(flows))
	var wg sync.WaitGroup
	for i, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = f.Run()
		}()
	}
	wg.Wait()
	for i, f := range flows {
		if got[i].Outcome != f.Want {
			t.Errorf("%s: %s, want %s", f.Name, got[i], f.Want)
		}
	}
}

// Silence is how long a probe that should be dropped waits: long enough
// for a forwarded packet's answer on a loaded machine.
const Silence = 700 * time.Millisecond

// UDPFlow probes UDP from the client to dst:port from a fresh source port.
func (e *Env) UDPFlow(name string, dst netip.Addr, port uint16, want Outcome) Flow {
	return e.UDPFlowWith(name, dst, port, want, UDPOptions{})
}

// UDPFlowWith is UDPFlow with options (the source port is always fresh).
func (e *Env) UDPFlowWith(name string, dst netip.Addr, port uint16, want Outcome, o UDPOptions) Flow {
	o.SrcPort = e.Port()
	if want == Silent && o.Timeout == 0 {
		o.Timeout = Silence
	}
	return Flow{Name: name, Want: want, Run: func() Probe {
		return UDP(e.Lab.Lab.Client, netip.AddrPortFrom(dst, port), o)
	}}
}

// TCPFlow connects from the client to dst:port and exchanges 3000 bytes.
func (e *Env) TCPFlow(name string, dst netip.Addr, port uint16, want Outcome) Flow {
	timeout := 3 * time.Second
	if want == Silent {
		timeout = Silence
	}
	return Flow{Name: name, Want: want, Run: func() Probe {
		err := TCP(e.Lab.Lab.Client, netip.AddrPortFrom(dst, port), timeout)
		switch {
		case err == nil:
			return Probe{Outcome: Answered}
		case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout"):
			return Probe{Outcome: Silent}
		}
		return Probe{Outcome: Failed, Err: err}
	}}
}

// PingFlow pings dst from the client.
func (e *Env) PingFlow(name string, dst netip.Addr, want Outcome) Flow {
	timeout := 2 * time.Second
	if want == Silent {
		timeout = Silence
	}
	id := e.Port()
	return Flow{Name: name, Want: want, Run: func() Probe { return Ping(e.Lab.Lab.Client, dst, id, timeout) }}
}

// Run runs every registered case against the backend open builds, on one
// lab: the cases share a dataplane (each applies its own config) unless
// they ask for a fresh one. Afterwards it closes the dataplane and checks
// that nothing of it is left on the lab's interfaces.
//
// supported is what the backend declares (its Supported()): a case that
// Needs a feature the backend does not declare is skipped, and one it
// declares must pass. Without the list a case needing features runs when
// the backend accepts its config and is skipped when Apply refuses it
// with dataplane.ErrNotSupported (so a backend that declares a feature
// should pass the list: a wrongful refusal then fails).
func Run(t *testing.T, mode dataplane.Mode, open Opener, supported ...dataplane.Feature) {
	l := NewLab(t, nil)
	var ports atomic.Uint32
	ports.Store(20000)
	e := &Env{Mode: mode, Lab: l, open: open, ports: &ports, supported: supported}
	defer func() {
		if e.DP != nil {
			if err := e.DP.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
		checkDetached(t, l)
	}()
	for _, c := range Cases() {
		t.Run(c.Name, func(t *testing.T) { runCase(t, e, c) })
	}
}

func runCase(t *testing.T, e *Env, c Case) {
	if c.Fresh && e.DP != nil {
		if err := e.DP.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		e.DP = nil
	}
	if c.Fresh {
		defer func() {
			if e.DP != nil {
				if err := e.DP.Close(); err != nil {
					t.Errorf("Close the case's dataplane: %v", err)
				}
				e.DP = nil
			}
		}()
	}
	if e.supported != nil {
		for _, f := range c.Needs {
			if !slices.Contains(e.supported, f) {
				t.Skipf("the %s backend does not declare %s", e.Mode, f)
			}
		}
	}
	cfg := Base(e.Lab)
	if c.Config != nil {
		cfg = c.Config(e)
	}
	if len(c.Needs) > 0 && e.supported == nil {
		// Undeclared: the backend's own refusal decides.
		if e.DP == nil {
			dp, err := e.open(context.Background(), e.Lab.Firewall.Path)
			if err != nil {
				t.Fatalf("open %s backend: %v", e.Mode, err)
			}
			e.DP = dp
		}
		if _, err := e.DP.Apply(context.Background(), cfg); errors.Is(err, dataplane.ErrNotSupported) {
			t.Skipf("the %s backend refuses the case's config (its test passes no Supported() list to dptest.Run): %v", e.Mode, err)
		} else if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		e.Applied = cfg
	} else if e.DP == nil {
		e.Reopen(t, cfg)
	} else {
		e.Apply(t, cfg)
	}
	d, known := divergence(c.Name, e.Mode)
	if !known {
		c.Run(t, e)
		return
	}
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(r, e)
	}()
	<-done
	if !r.Failed() {
		if d.Intermittent {
			t.Logf("known intermittent divergence (%s) did not show on the %s backend this run: %s", d.Issue, e.Mode, d.Why)
			return
		}
		t.Errorf("known divergence (%s) no longer diverges on the %s backend: remove it from dptest.Divergences", d.Issue, e.Mode)
		return
	}
	t.Skipf("KNOWN DIVERGENCE (%s) on the %s backend: %s\nwhat the case saw:\n  %s",
		d.Issue, e.Mode, d.Why, strings.Join(r.failures, "\n  "))
}

// recorder is the testing.TB a case with a known divergence runs with:
// failures are recorded instead of failing the test. Fatal and Skip end
// the case's goroutine as they would a test's.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	failures []string
}

func (r *recorder) record(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, strings.TrimSpace(msg))
}

func (r *recorder) Helper()                         {}
func (r *recorder) Error(args ...any)               { r.record(fmt.Sprint(args...)) }
func (r *recorder) Errorf(format string, a ...any)  { r.record(fmt.Sprintf(format, a...)) }
func (r *recorder) Fatal(args ...any)               { r.Error(args...); runtime.Goexit() }
func (r *recorder) Fatalf(format string, a ...any)  { r.Errorf(format, a...); runtime.Goexit() }
func (r *recorder) Fail()                           { r.record("Fail called") }
func (r *recorder) FailNow()                        { r.Fail(); runtime.Goexit() }
func (r *recorder) Skip(args ...any)                { r.record("skipped: " + fmt.Sprint(args...)); runtime.Goexit() }
func (r *recorder) Skipf(format string, a ...any)   { r.Skip(fmt.Sprintf(format, a...)) }
func (r *recorder) SkipNow()                        { r.Skip("SkipNow") }
func (r *recorder) Logf(format string, args ...any) { r.TB.Logf(format, args...) }
func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.failures) > 0
}

// checkDetached: after Close no XDP program is attached to the firewall's
// lab interfaces, and the kernel forwards between client and server again.
func checkDetached(t *testing.T, l *Lab) {
	err := l.Firewall.Do(func() error {
		for _, name := range []string{l.FwClientIf, l.FwServerIf, l.FwSinkIf} {
			lk, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if x := lk.Attrs().Xdp; x != nil && (x.Attached || x.ProgId != 0) {
				return fmt.Errorf("%s still has XDP program %d attached after Close", name, x.ProgId)
			}
			// The eBPF backend attaches at TC (tcx) on veths.
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: lk.Attrs().Index, Attach: at})
				if err != nil {
					if errors.Is(err, ebpf.ErrNotSupported) {
						continue // no tcx on this kernel: nothing can be attached there
					}
					return fmt.Errorf("query %s's tcx programs: %w", name, err)
				}
				if len(res.Programs) > 0 {
					return fmt.Errorf("%s still has %d tcx program(s) (%v) attached after Close", name, len(res.Programs), at)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if p := UDP(l.Lab.Client, netip.AddrPortFrom(l.ServerAddr4, PortDenied), UDPOptions{}); p.Outcome != Answered {
		t.Errorf("kernel forwarding after Close: %s, want answered", p)
	}
}
