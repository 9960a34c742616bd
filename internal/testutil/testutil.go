// Package testutil holds the helpers every fwplane test uses to decide
// whether it can run: privileged tests skip with a reason on a machine that
// cannot run them, and fail instead when FWPLANE_REQUIRE_PRIVILEGED=1 (CI),
// so a missing privilege can never turn a test suite green by skipping.
//
// Following cilium/ebpf's testutils, tests skip on the *result* of trying
// the operation, never on the user id alone.
package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
)

// RequireEnv is the environment variable that turns skips into failures.
const RequireEnv = "FWPLANE_REQUIRE_PRIVILEGED"

// Required reports whether privileged tests must run (CI).
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Need is a privilege a test needs.
type Need int

const (
	// NeedBPF: create BPF maps and load programs (CAP_BPF, or root).
	NeedBPF Need = iota
	// NeedNetNS: create network namespaces and links (CAP_SYS_ADMIN and
	// CAP_NET_ADMIN).
	NeedNetNS
)

var (
	probeOnce [2]sync.Once
	probeErr  [2]error
)

func probe(n Need) error {
	probeOnce[n].Do(func() {
		switch n {
		case NeedBPF:
			probeErr[n] = probeBPF()
		case NeedNetNS:
			probeErr[n] = probeNetNS()
		}
	})
	return probeErr[n]
}

func probeBPF() error {
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock rlimit: %w", err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create a BPF map: %w", err)
	}
	return m.Close()
}

func probeNetNS() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		return fmt.Errorf("create a network namespace: %w", err)
	}
	ns.Close()
	if err := netns.Set(orig); err != nil {
		// This thread is stuck in a foreign namespace: do not unlock it, so
		// the runtime destroys the thread instead of reusing it.
		runtime.LockOSThread()
		return fmt.Errorf("restore netns: %w", err)
	}
	return nil
}

// Privileged skips the test (or fails it under FWPLANE_REQUIRE_PRIVILEGED=1)
// unless every need can be met, trying each once per process.
func Privileged(tb testing.TB, needs ...Need) {
	tb.Helper()
	for _, n := range needs {
		if err := probe(n); err != nil {
			what := map[Need]string{NeedBPF: "BPF (CAP_BPF or root)", NeedNetNS: "network namespaces (CAP_SYS_ADMIN + CAP_NET_ADMIN or root)"}[n]
			if Required() {
				tb.Fatalf("test needs %s, %s=1 forbids skipping: %v", what, RequireEnv, err)
			}
			tb.Skipf("skipped: test needs %s: %v (run as root, or set %s=1 to make this a failure)", what, err, RequireEnv)
		}
	}
}

// SkipIfNotSupported skips the test when err says the kernel lacks a
// feature, unless FWPLANE_REQUIRE_PRIVILEGED=1, where the kernel is expected
// to have everything and the test fails. It fails on any other non-nil err.
func SkipIfNotSupported(tb testing.TB, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, dataplane.ErrNotSupported) || errors.Is(err, unix.EOPNOTSUPP) {
		if Required() {
			tb.Fatalf("feature not supported but %s=1: %v", RequireEnv, err)
		}
		tb.Skipf("skipped: not supported on this kernel: %v", err)
	}
	tb.Fatal(err)
}

// Command skips the test (or fails it under FWPLANE_REQUIRE_PRIVILEGED=1,
// where CI installs every tool the tests drive) unless the executable
// name is on PATH; pkg names the Debian package that provides it.
func Command(tb testing.TB, name, pkg string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if Required() {
			tb.Fatalf("test needs %s (Debian package %s), %s=1 forbids skipping: %v", name, pkg, RequireEnv, err)
		}
		tb.Skipf("skipped: test needs %s (Debian package %s): %v", name, pkg, err)
	}
}
