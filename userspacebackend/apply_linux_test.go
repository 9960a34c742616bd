package userspacebackend

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
)

// xdpAttached reports whether an XDP program is attached to iface in ns.
func xdpAttached(t testing.TB, ns *netlab.NS, iface string) bool {
	t.Helper()
	var on bool
	err := ns.Do(func() error {
		lk, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		x := lk.Attrs().Xdp
		on = x != nil && (x.Attached || x.ProgId != 0)
		return nil
	})
	if err != nil {
		t.Fatalf("read %s: %v", iface, err)
	}
	return on
}

// TestIntegrationApplyFaultUndo fails each build step of an Apply that
// adds an interface (shim and socket), resizes the neighbour table and
// adds a mirror rule, and checks after each failure that nothing of the
// next generation is left: no shim on the new interface, the same
// generation, the running one still forwarding and refusing as before.
// Then the same config applies.
func TestIntegrationApplyFaultUndo(t *testing.T) {
	e := newLabEnvWith(t, 0, &netlab.Options{MirrorSink: true})
	l := e.l
	b := newBackend(t, e, nil, nil)
	ctx := context.Background()

	next := netlabConfig(l)
	next.Zones = append(next.Zones, dataplane.Zone{Name: "sink"})
	next.Interfaces = append(next.Interfaces, dataplane.Interface{Name: l.FwSinkIf, Zone: "sink"})
	next.Tables.Neighbors = 2048
	next.PortMirroring = []dataplane.MirrorRule{{Input: l.FwClientIf, Output: l.FwServerIf}}
	next.Policies = nil // would deny everything if it were applied

	for _, step := range []string{stepTables, stepRouter, stepNeighbors, stepPorts, stepMirrors} {
		t.Run(step, func(t *testing.T) {
			fault := func(s string) error {
				if s == step {
					return fmt.Errorf("injected failure at %s", s)
				}
				return nil
			}
			applyFault.Store(&fault)
			_, err := b.Apply(ctx, next)
			applyFault.Store(nil)
			if err == nil || err.Error() != "injected failure at "+step {
				t.Fatalf("Apply with %s failing = %v, want the injected error", step, err)
			}
			if xdpAttached(t, l.Firewall, l.FwSinkIf) {
				t.Errorf("after a failure at %s the new interface %s still has the shim", step, l.FwSinkIf)
			}
			if rep := report(t, b); rep.Generation != 1 {
				t.Errorf("generation %d after a failed Apply, want 1", rep.Generation)
			}
			if got := b.snap.Load().neigh.Capacity(); got != dataplane.DefaultNeighbors {
				t.Errorf("neighbour table capacity %d, want the running %d", got, dataplane.DefaultNeighbors)
			}
			if err := udpRT(l, 0, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
				t.Errorf("allowed flow after the failed Apply: %v", err)
			}
			if err := udpRT(l, 0, l.ServerAddr4, portDenied, 300*time.Millisecond); err == nil {
				t.Error("denied flow passed after the failed Apply")
			}
		})
	}
	res, err := b.Apply(ctx, next)
	if err != nil || res.Generation != 2 {
		t.Fatalf("Apply without a fault: %+v, %v", res, err)
	}
	if !xdpAttached(t, l.Firewall, l.FwSinkIf) {
		t.Errorf("%s has no shim after the Apply that adds it", l.FwSinkIf)
	}
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 300*time.Millisecond); err == nil {
		t.Error("the applied config has no policy, yet a new flow passed")
	}
}

// TestIntegrationFlowCacheResize: a new tables.flow_cache reaches the
// running workers (their caches are replaced at the next batch), as the
// flow_cache rows show; traffic keeps flowing.
func TestIntegrationFlowCacheResize(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	cfg := netlabConfig(l)
	cfg.Tables.FlowCache = 1024
	b := newBackend(t, e, nil, cfg)
	caps := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, r := range report(t, b).Resources {
			if r.Name == "flow_cache" && r.Detail {
				out[r.Scope] = r.Capacity
			}
		}
		return out
	}
	for _, size := range []uint32{1024, 8192} {
		cfg.Tables.FlowCache = size
		if _, err := b.Apply(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for {
			got, ok := caps(), true
			for _, c := range got {
				ok = ok && c == uint64(size)
			}
			if ok && len(got) == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("flow_cache %d: rows %v", size, got)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := udpRT(l, 0, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
			t.Errorf("flow_cache %d: %v", size, err)
		}
	}
}
