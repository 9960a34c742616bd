package capability

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

// Synthetic backends shaped like the real ones, so the gate's logic is
// tested independently of what each backend implements today.
var (
	ebpfDecl = Backend{
		Mode: dataplane.ModeEBPF,
		Features: []dataplane.Feature{dataplane.FeatureIPv4Forwarding, dataplane.FeatureIPv6Forwarding,
			dataplane.FeatureStatefulPolicy, dataplane.FeaturePortPolicy, dataplane.FeaturePortMirroring, dataplane.FeatureMirrorSampling},
		Requires: []ProbeName{ProbeBPFSyscall, ProbeXDPProgram, ProbeXDPLink, ProbeFIBLookup, ProbeDevMap, ProbeLRUHash},
		Limits:   dataplane.Limits{Sessions: dataplane.TableLimit{Max: 1 << 24}},
	}
	userDecl = Backend{
		Mode: dataplane.ModeUserspace,
		Features: []dataplane.Feature{dataplane.FeatureIPv4Forwarding, dataplane.FeatureIPv6Forwarding,
			dataplane.FeatureStatefulPolicy, dataplane.FeaturePortPolicy, dataplane.FeatureQueueSelection},
		Requires: []ProbeName{ProbeBPFSyscall, ProbeXDPProgram, ProbeXDPLink, ProbeXSKMap, ProbeAFXDPSocket},
		Limits:   dataplane.Limits{Sessions: dataplane.TableLimit{Max: 1 << 22}},
	}
)

func fullHost() *Host {
	h := &Host{Kernel: "6.18", Probes: map[ProbeName]Result{}}
	for name := range MinKernel {
		h.Probes[name] = ResultOf(name, nil)
	}
	return h
}

func hostWithout(p ProbeName, err error) *Host {
	h := fullHost()
	h.Probes[p] = ResultOf(p, err)
	return h
}

func baseCfg() *dataplane.Config {
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: "eth0", Zone: "in"}, {Name: "eth1", Zone: "out"}},
		Zones:      []dataplane.Zone{{Name: "in"}, {Name: "out"}},
		Policies:   []dataplane.Policy{{FromZone: "in", ToZone: "out", Action: dataplane.ActionAllow}},
	}
}

func TestDecide(t *testing.T) {
	notSup := fmt.Errorf("probe: %w", ErrNotSupported)
	tests := []struct {
		name        string
		cfg         func(*dataplane.Config)
		host        *Host
		req         Request
		wantMode    dataplane.Mode
		wantFellBk  bool
		wantReasons map[dataplane.Mode][]string // substrings, in order
	}{
		{name: "auto prefers ebpf", host: fullHost(), req: Request{}, wantMode: dataplane.ModeEBPF},
		{name: "userspace preferred", host: fullHost(), req: Request{Preference: PreferUserspace}, wantMode: dataplane.ModeUserspace},
		{name: "queue selection only userspace", cfg: func(c *dataplane.Config) { c.Userspace.Queues = []int{0} },
			host: fullHost(), req: Request{Preference: PreferEBPF}, wantMode: dataplane.ModeUserspace, wantFellBk: true,
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"config needs queue_selection: not supported by the ebpf backend"}}},
		{name: "mirroring only ebpf", cfg: func(c *dataplane.Config) {
			c.PortMirroring = []dataplane.MirrorRule{{Input: "eth0", Output: "m0", Rate: 4}}
		},
			host: fullHost(), req: Request{Preference: PreferUserspace}, wantMode: dataplane.ModeEBPF, wantFellBk: true,
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeUserspace: {
				"config needs mirror_sampling: not supported", "config needs port_mirroring: not supported"}}},
		{name: "strict userspace refuses mirroring", cfg: func(c *dataplane.Config) { c.PortMirroring = []dataplane.MirrorRule{{Input: "eth0", Output: "m0"}} },
			host: fullHost(), req: Request{Preference: PreferUserspace, Strict: true},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeUserspace: {"config needs port_mirroring"}}},
		{name: "static routes nobody", cfg: func(c *dataplane.Config) {
			c.Forwarding.Routes = []dataplane.Route{{Destination: "10.0.0.0/8", Interface: "eth1"}}
		}, host: fullHost(), req: Request{},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"static_routes"}, dataplane.ModeUserspace: {"static_routes"}}},
		{name: "no devmap falls back", host: hostWithout(ProbeDevMap, notSup), req: Request{}, wantMode: dataplane.ModeUserspace, wantFellBk: true,
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"host lacks devmap (needs kernel >= 4.14)"}}},
		{name: "no lru", host: hostWithout(ProbeLRUHash, notSup), req: Request{Preference: PreferEBPF, Strict: true},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"host lacks lru_hash"}}},
		{name: "no fib lookup", host: hostWithout(ProbeFIBLookup, notSup), req: Request{}, wantMode: dataplane.ModeUserspace, wantFellBk: true,
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"host lacks xdp_fib_lookup"}}},
		{name: "no xdp link", host: hostWithout(ProbeXDPLink, notSup), req: Request{},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"host lacks xdp_bpf_link"}, dataplane.ModeUserspace: {"host lacks xdp_bpf_link"}}},
		{name: "no af_xdp", host: hostWithout(ProbeAFXDPSocket, notSup), req: Request{Preference: PreferUserspace}, wantMode: dataplane.ModeEBPF, wantFellBk: true,
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeUserspace: {"host lacks af_xdp_socket"}}},
		{name: "no xskmap", host: hostWithout(ProbeXSKMap, notSup), req: Request{Preference: PreferUserspace, Strict: true},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeUserspace: {"host lacks xskmap"}}},
		{name: "no bpf at all", host: hostWithout(ProbeBPFSyscall, notSup), req: Request{},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"host lacks bpf_syscall"}, dataplane.ModeUserspace: {"host lacks bpf_syscall"}}},
		{name: "no xdp", host: hostWithout(ProbeXDPProgram, notSup), req: Request{},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"host lacks xdp_program"}, dataplane.ModeUserspace: {"host lacks xdp_program"}}},
		{name: "inconclusive is not absent", host: hostWithout(ProbeDevMap, errors.New("operation not permitted")), req: Request{}, wantMode: dataplane.ModeEBPF},
		{name: "unprobed is not absent", host: &Host{Probes: map[ProbeName]Result{}}, req: Request{}, wantMode: dataplane.ModeEBPF},
		{name: "optional probes do not block", host: hostWithout(ProbeMapIterKfunc, notSup), req: Request{}, wantMode: dataplane.ModeEBPF},
		{name: "sessions beyond userspace limit", cfg: func(c *dataplane.Config) { c.Tables.Sessions = 1 << 23 },
			host: fullHost(), req: Request{Preference: PreferUserspace}, wantMode: dataplane.ModeEBPF, wantFellBk: true,
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeUserspace: {"tables.sessions: 8388608 entries, the userspace backend supports at most 4194304"}}},
		{name: "sessions beyond every limit", cfg: func(c *dataplane.Config) { c.Tables.Sessions = 1 << 25 }, host: fullHost(), req: Request{},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"the ebpf backend supports at most"}, dataplane.ModeUserspace: {"the userspace backend supports at most"}}},
		{name: "interface lacks redirect", host: func() *Host {
			h := fullHost()
			h.Interfaces = map[string]InterfaceCaps{"eth0": {Name: "eth0", Exists: true, Features: []string{"basic"}}}
			return h
		}(), req: Request{Preference: PreferEBPF, Strict: true},
			wantReasons: map[dataplane.Mode][]string{dataplane.ModeEBPF: {"interface eth0 does not advertise XDP feature redirect"}}},
	}
	backends := []Backend{ebpfDecl, userDecl}
	backends[0].NeedsInterfaceFeatures = []string{"basic", "redirect"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseCfg()
			if tt.cfg != nil {
				tt.cfg(cfg)
			}
			d, err := Decide(cfg, tt.host, backends, tt.req)
			if tt.wantMode == "" {
				var nse *dataplane.NotSupportedError
				if !errors.Is(err, dataplane.ErrNotSupported) || !errors.As(err, &nse) {
					t.Fatalf("Decide() error = %v, want a NotSupportedError", err)
				}
				if d.Mode != "" {
					t.Errorf("mode %q chosen although an error was returned", d.Mode)
				}
				// Every reason of every considered backend is in the error.
				for mode, subs := range tt.wantReasons {
					for _, s := range subs {
						if !strings.Contains(err.Error(), string(mode)+": ") || !strings.Contains(err.Error(), s) {
							t.Errorf("error %q lacks %s reason %q", err, mode, s)
						}
					}
				}
			} else if err != nil {
				t.Fatalf("Decide() = %v\n%s", err, d.Explain())
			}
			if d.Mode != tt.wantMode || d.FellBack != tt.wantFellBk {
				t.Errorf("mode=%q fellBack=%v, want %q %v\n%s", d.Mode, d.FellBack, tt.wantMode, tt.wantFellBk, d.Explain())
			}
			for mode, subs := range tt.wantReasons {
				v, ok := d.Verdict(mode)
				if !ok {
					t.Fatalf("no verdict for %s", mode)
				}
				if v.Supported {
					t.Errorf("%s marked supported, want reasons %q", mode, subs)
				}
				joined := strings.Join(v.Reasons, "\n")
				for _, s := range subs {
					if !strings.Contains(joined, s) {
						t.Errorf("%s reasons %q lack %q", mode, v.Reasons, s)
					}
				}
			}
		})
	}
}

// TestDecideCoversEveryFeature checks every feature a config can need is
// either supported by some declared backend or rejected with its name.
func TestDecideCoversEveryFeature(t *testing.T) {
	for _, f := range dataplane.AllFeatures {
		b := Backend{Mode: dataplane.ModeEBPF, Features: nil}
		cfg := baseCfg()
		cfg.Policies[0].Protocol = dataplane.ProtoTCP
		cfg.Policies[0].DestinationPorts = []dataplane.PortRange{{First: 80, Last: 80}}
		cfg.Forwarding.Routes = []dataplane.Route{{Destination: "10.0.0.0/8", Interface: "eth1"}}
		cfg.PortMirroring = []dataplane.MirrorRule{{Input: "eth0", Output: "m", Rate: 5}}
		cfg.Userspace.Queues = []int{0}
		cfg.Interfaces[0].Attach = dataplane.AttachTC
		cfg.NAT = []dataplane.NATRule{
			{Type: dataplane.NATSource, FromZone: cfg.Zones[0].Name, ToZone: cfg.Zones[0].Name, Pool: []string{"2001:db8::1"}},
			{Type: dataplane.NATDestination, Destination: "192.0.2.1", TranslateTo: "10.0.0.1"},
		}
		v := Evaluate(cfg, fullHost(), b)
		if !strings.Contains(strings.Join(v.Reasons, "\n"), "config needs "+string(f)+":") {
			t.Errorf("feature %s missing from reasons %q", f, v.Reasons)
		}
	}
}

func TestInconclusiveNoted(t *testing.T) {
	h := hostWithout(ProbeXSKMap, errors.New("permission denied"))
	d, err := Decide(baseCfg(), h, []Backend{ebpfDecl, userDecl}, Request{Preference: PreferUserspace})
	if err != nil || d.Mode != dataplane.ModeUserspace {
		t.Fatalf("got %v %v", d.Mode, err)
	}
	v, _ := d.Verdict(dataplane.ModeUserspace)
	if diff := cmp.Diff([]string{"probe xskmap inconclusive (permission denied): assuming available"}, v.Notes); diff != "" {
		t.Errorf("notes (-want +got):\n%s", diff)
	}
}

func TestStrictRecordsExcluded(t *testing.T) {
	d, err := Decide(baseCfg(), fullHost(), []Backend{ebpfDecl, userDecl}, Request{Preference: PreferEBPF, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	v, ok := d.Verdict(dataplane.ModeUserspace)
	if !ok || v.Considered || !v.Supported {
		t.Errorf("userspace verdict = %+v, want supported but not considered", v)
	}
	exp := d.Explain()
	for _, want := range []string{"backend: ebpf (preference ebpf, strict)", "userspace: supported, not considered", "config needs: ipv4_forwarding, ipv6_forwarding, stateful_policy"} {
		if !strings.Contains(exp, want) {
			t.Errorf("Explain() lacks %q:\n%s", want, exp)
		}
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var back Decision
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(d, back); diff != "" {
		t.Errorf("JSON round trip (-want +got):\n%s", diff)
	}
}

func TestDecideRejectsBadInput(t *testing.T) {
	if _, err := Decide(baseCfg(), fullHost(), nil, Request{Preference: "fastest"}); err == nil || !strings.Contains(err.Error(), "want auto, ebpf or userspace") {
		t.Errorf("bad preference: %v", err)
	}
	bad := baseCfg()
	bad.Zones = nil
	if _, err := Decide(bad, fullHost(), nil, Request{}); !errors.Is(err, dataplane.ErrInvalidConfig) {
		t.Errorf("invalid config: %v", err)
	}
	d, err := Decide(baseCfg(), fullHost(), nil, Request{})
	if !errors.Is(err, dataplane.ErrNotSupported) || !strings.Contains(err.Error(), "backend not registered") {
		t.Errorf("no backends: %v\n%s", err, d.Explain())
	}
}

func TestResultOf(t *testing.T) {
	tests := []struct {
		err  error
		want Status
	}{
		{nil, Available},
		{fmt.Errorf("x: %w", ErrNotSupported), NotSupported},
		{errors.New("permission denied"), Inconclusive},
	}
	for _, tt := range tests {
		if got := ResultOf(ProbeDevMap, tt.err).Status; got != tt.want {
			t.Errorf("ResultOf(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
}
