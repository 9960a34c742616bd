package fwplane

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

func labConfig(l *netlab.Lab) *dataplane.Config {
	return &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: l.FwClientIf, Zone: "inside"}, {Name: l.FwServerIf, Zone: "outside"}},
		Zones:      []dataplane.Zone{{Name: "inside"}, {Name: "outside"}},
		Policies: []dataplane.Policy{{FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoUDP,
			DestinationPorts: []dataplane.PortRange{{First: 7000, Last: 7000}}, Action: dataplane.ActionAllow}},
	}
}

// TestIntegrationOpen brings up a dataplane through the gate in a lab
// firewall namespace, for each way of choosing a backend, and checks it
// forwards what the policy allows and drops the rest.
func TestIntegrationOpen(t *testing.T) {
	tests := []struct {
		name     string
		opts     Options
		mod      func(*dataplane.Config)
		wantMode dataplane.Mode
		fellBack bool
	}{
		{name: "auto prefers ebpf", wantMode: dataplane.ModeEBPF},
		{name: "userspace strict", opts: Options{Backend: capability.PreferUserspace, Strict: true}, wantMode: dataplane.ModeUserspace},
		// Queue selection is a userspace-only feature: auto falls back.
		{name: "auto falls back to userspace", mod: func(c *dataplane.Config) { c.Userspace.Queues = []int{0} },
			wantMode: dataplane.ModeUserspace, fellBack: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
			l := netlab.NewT(t, nil)
			ctx := context.Background()
			if err := l.ResolveNeighbors(ctx); err != nil {
				t.Fatal(err)
			}
			for _, end := range []struct {
				ns    *netlab.NS
				iface string
			}{{l.Client, l.ClientIf}, {l.Server, l.ServerIf}} {
				c, err := netlab.AttachCounter(end.ns, end.iface, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
			}
			for _, port := range []uint16{7000, 7001} {
				stop, err := netlab.UDPEcho(ctx, l.Server, netip.AddrPortFrom(l.ServerAddr4, port))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(stop)
			}
			cfg := labConfig(l)
			if tt.mod != nil {
				tt.mod(cfg)
			}
			opts := tt.opts
			opts.NetNS = l.Firewall.Path
			dp, d, err := Open(ctx, cfg, &opts)
			if err != nil {
				t.Fatalf("Open: %v\n%s", err, d.Explain())
			}
			t.Cleanup(func() { dp.Close() })
			if d.Mode != dp.Mode() || d.Mode != tt.wantMode || d.FellBack != tt.fellBack {
				t.Errorf("decision %q (fell back %v), dataplane %q; want %q (fell back %v)\n%s",
					d.Mode, d.FellBack, dp.Mode(), tt.wantMode, tt.fellBack, d.Explain())
			}
			rt := func(port uint16) error {
				ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
				got, err := netlab.UDPRoundTrip(ctx, l.Client, netip.AddrPort{}, netip.AddrPortFrom(l.ServerAddr4, port), []byte("ping"))
				if err == nil && !bytes.Equal(got, []byte("ping")) {
					err = errors.New("echo mismatch")
				}
				return err
			}
			if err := rt(7000); err != nil {
				t.Errorf("allowed flow: %v", err)
			}
			if err := rt(7001); err == nil {
				t.Error("denied flow got through")
			}
			r, err := dp.ResourceStats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if r.Took <= 0 || r.Taken.IsZero() {
				t.Errorf("report timing not measured: taken %v took %v", r.Taken, r.Took)
			}
			if r.Sessions == nil || r.Sessions.Total != 1 {
				t.Errorf("sessions = %+v, want 1", r.Sessions)
			}
			// Re-applying a config the running backend cannot do is
			// refused with reasons and the dataplane keeps forwarding.
			bad := cfg.Clone()
			bad.Forwarding.Routes = []dataplane.Route{{Destination: "10.99.0.0/16", Interface: l.FwServerIf}}
			if _, err := dp.Apply(ctx, bad); !errors.Is(err, dataplane.ErrNotSupported) || !strings.Contains(err.Error(), "static routes") {
				t.Errorf("Apply(static routes) = %v, want ErrNotSupported naming static routes", err)
			}
			if err := rt(7000); err != nil {
				t.Errorf("after refused apply: %v", err)
			}
			if err := dp.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := l.Firewall.Do(func() error { return checkNoXDP(l.FwClientIf, l.FwServerIf) }); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestIntegrationOpenFailsClosed: a config no allowed backend can run is an
// error with every reason, and nothing is left attached.
func TestIntegrationOpenFailsClosed(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, nil)
	cfg := labConfig(l)
	cfg.Forwarding.Routes = []dataplane.Route{{Destination: "10.99.0.0/16", Interface: l.FwServerIf}}
	_, d, err := Open(context.Background(), cfg, &Options{NetNS: l.Firewall.Path, Backend: capability.PreferEBPF, Strict: true})
	if !errors.Is(err, dataplane.ErrNotSupported) {
		t.Fatalf("Open = %v, want ErrNotSupported", err)
	}
	if !strings.Contains(err.Error(), "static_routes") || d.Mode != "" {
		t.Errorf("error %q / mode %q; want the static_routes reason and no mode", err, d.Mode)
	}
	if !strings.Contains(d.Explain(), "userspace: not supported, not considered") {
		t.Errorf("explanation lacks the excluded backend:\n%s", d.Explain())
	}
}

func TestOpenInvalidConfig(t *testing.T) {
	_, _, err := Open(context.Background(), &dataplane.Config{}, &Options{Host: &capability.Host{}})
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 2 {
		t.Fatalf("Open(empty config) = %v, want a ConfigError with 2 problems", err)
	}
}
