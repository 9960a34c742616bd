package fwplane

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/ebpfbackend"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
	"github.com/fwplane/fwplane/userspacebackend"
)

// TestOpenPinnedDirDecidesBackend: a pin directory that holds a pinned
// dataplane decides which backend runs: auto adopts it (strictly: the
// other backend cannot attach over it), a preference for the other
// backend is refused naming the directory, and an adopted dataplane whose
// new config fails is released (it keeps enforcing), never closed.
func TestOpenPinnedDirDecidesBackend(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	dir := netlab.PinDir(t)
	// What a pinned userspace dataplane looks like to PinnedMode.
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: userspacebackend.MetaName, Type: ebpf.Array, KeySize: 4, ValueSize: 48,
		MaxEntries: 1, Pinning: ebpf.PinByName}, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if mode, ok := PinnedMode(dir); !ok || mode != dataplane.ModeUserspace {
		t.Fatalf("PinnedMode = %q, %v; want userspace", mode, ok)
	}

	var built []*fakeDP
	opts := &Options{Host: everythingHost(), Backend: capability.PreferEBPF, PinDir: dir}
	_, _, err = open(context.Background(), smallConfig(), opts, fakeBackends(opts, nil, &built))
	if !errors.Is(err, dataplane.ErrNotSupported) || !strings.Contains(err.Error(), dir+" holds a pinned userspace dataplane") || len(built) != 0 {
		t.Errorf("ebpf over a pinned userspace dataplane: %v, %d built; want a refusal naming the directory, nothing built", err, len(built))
	}

	opts = &Options{Host: everythingHost(), PinDir: dir}
	dp, res, err := open(context.Background(), smallConfig(), opts, fakeBackends(opts, nil, &built))
	if err != nil {
		t.Fatalf("auto over a pinned userspace dataplane: %v", err)
	}
	if dp.Mode() != dataplane.ModeUserspace || !res.Adopted || !res.Request.Strict || !strings.Contains(res.Explain(), "adopts the dataplane pinned in "+dir) {
		t.Errorf("auto: running %s, adopted %v, strict %v; want the pinned userspace one, strictly, said in Explain:\n%s", dp.Mode(), res.Adopted, res.Request.Strict, res.Explain())
	}

	built = nil
	refusal := &dataplane.NotSupportedError{What: "apply", Reasons: []string{"no room"}}
	_, _, err = open(context.Background(), smallConfig(), opts, fakeBackends(opts, map[dataplane.Mode]error{dataplane.ModeUserspace: refusal}, &built))
	if err == nil || len(built) != 1 || !built[0].released || built[0].closed {
		t.Errorf("refused config on the adopted dataplane: %v, %d built; want one, released (still enforcing), not closed", err, len(built))
	}

	if _, err := RemovePinned(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("RemovePinned of an empty directory: %v, want ErrNotExist", err)
	}
}

func TestOptionsPinDirConflict(t *testing.T) {
	opts := &Options{Host: everythingHost(), PinDir: "/sys/fs/bpf/fwplane/a",
		EBPF: &ebpfbackend.Options{PinDir: "/sys/fs/bpf/fwplane/b"}, Userspace: &userspacebackend.Options{PinDir: "/sys/fs/bpf/fwplane/a"}}
	_, _, err := Open(context.Background(), smallConfig(), opts)
	var ce *dataplane.ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 1 || ce.Problems[0].Field != "Options.EBPF.PinDir" {
		t.Errorf("Open = %v, want a ConfigError naming Options.EBPF.PinDir only", err)
	}
}

func TestPinDirFor(t *testing.T) {
	if d, err := PinDirFor("edge1"); err != nil || d != "/sys/fs/bpf/fwplane/edge1" {
		t.Errorf("PinDirFor(edge1) = %q, %v", d, err)
	}
	for _, bad := range []string{"", ".", "..", "a/b"} {
		if _, err := PinDirFor(bad); err == nil {
			t.Errorf("PinDirFor(%q) accepted", bad)
		}
	}
}
