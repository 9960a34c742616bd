package capability

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// TestIntegrationProbeHost checks the probe reports what this kernel has.
// Under FWPLANE_REQUIRE_PRIVILEGED=1 the host is the CI machine (Linux
// 6.18 with BTF), where every probe must pass: a missing feature there is a
// probe bug, not a skip.
func TestIntegrationProbeHost(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	h, err := ProbeHost(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if h.Kernel == "" {
		t.Error("kernel release not read")
	}
	for _, r := range h.Sorted() {
		t.Logf("%s", r)
	}
	for name := range MinKernel {
		r := h.Status(name)
		if r.Status == Available {
			continue
		}
		if testutil.Required() {
			t.Errorf("probe %s on this kernel: %s", name, r)
		} else {
			t.Logf("probe %s not available here: %s", name, r)
		}
	}
	// Cached: a second call returns the same results.
	h2, err := ProbeHost(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range h.Probes {
		if h2.Probes[name] != r {
			t.Errorf("probe %s changed between calls: %v then %v", name, r, h2.Probes[name])
		}
	}
}

// TestIntegrationProbeInterfaces asks the kernel about real veths.
func TestIntegrationProbeInterfaces(t *testing.T) {
	l := netlab.NewT(t, nil)
	h, err := ProbeHost(context.Background(), &ProbeOptions{NetNS: l.Firewall.Path, Interfaces: []string{l.FwClientIf, "nosuchif0"}})
	if err != nil {
		t.Fatal(err)
	}
	c := h.Interfaces[l.FwClientIf]
	if !c.Exists || c.Ifindex == 0 {
		t.Fatalf("interface %s not found in its namespace: %+v", l.FwClientIf, c)
	}
	// veth advertises XDP (basic, redirect, ndo-xmit) on 6.3+; never
	// zero-copy (an XDP_ZEROCOPY bind fails on veth with EOPNOTSUPP).
	if c.Features == nil {
		if testutil.Required() {
			t.Fatalf("no xdp-features for a veth on this kernel: %s", c.FeaturesErr)
		}
		t.Skipf("kernel does not advertise xdp-features: %s", c.FeaturesErr)
	}
	if !c.Has("basic") || !c.Has("redirect") || c.Has("xsk-zerocopy") {
		t.Errorf("veth features = %v, want basic+redirect, no xsk-zerocopy", c.Features)
	}
	if h.Interfaces["nosuchif0"].Exists {
		t.Error("a missing interface was reported as existing")
	}
}

// TestResultOfEbpfErrors: cilium/ebpf's own ErrNotSupported means absent,
// a permission error means inconclusive, never absent.
func TestResultOfEbpfErrors(t *testing.T) {
	if got := ResultOf(ProbeXSKMap, fmt.Errorf("map: %w", ebpf.ErrNotSupported)).Status; got != NotSupported {
		t.Errorf("ebpf.ErrNotSupported -> %s", got)
	}
	perm := ExplainPermission(fmt.Errorf("create map: %w", unix.EPERM))
	if got := ResultOf(ProbeXSKMap, perm).Status; got != Inconclusive {
		t.Errorf("EPERM -> %s, want inconclusive", got)
	}
	if !errors.Is(perm, unix.EPERM) {
		t.Error("ExplainPermission lost the errno")
	}
}
