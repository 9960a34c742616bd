package fwplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fwplane/fwplane/capability"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// The least-privilege test re-executes this test binary as an unprivileged
// user holding only the capabilities fwplane documents, inside the lab's
// firewall namespace. In that child, TestMain runs childMain instead of the
// tests.
const (
	childEnv       = "FWPLANE_LEASTPRIV_CHILD"
	childConfigEnv = "FWPLANE_LEASTPRIV_CONFIG"
	childModeEnv   = "FWPLANE_LEASTPRIV_BACKEND"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(childMain(os.Stdout))
	}
	os.Exit(m.Run())
}

// childReport is what the child tells the parent.
type childReport struct {
	Probes   map[capability.ProbeName]capability.Result `json:"probes"`
	Mode     dataplane.Mode                             `json:"mode,omitempty"`
	OpenErr  string                                     `json:"open_err,omitempty"`
	Rows     int                                        `json:"rows"`
	Sessions *dataplane.SessionCounts                   `json:"sessions,omitempty"`
	Methods  []string                                   `json:"methods,omitempty"`
	CloseErr string                                     `json:"close_err,omitempty"`
}

func childMain(w io.Writer) int {
	ctx := context.Background()
	var rep childReport
	var cfg dataplane.Config
	if err := json.Unmarshal([]byte(os.Getenv(childConfigEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "child: config:", err)
		return 2
	}
	h, err := capability.ProbeHost(ctx, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: probe:", err)
		return 2
	}
	rep.Probes = h.Probes
	dp, _, err := Open(ctx, &cfg, &Options{Backend: capability.Preference(os.Getenv(childModeEnv)), Strict: true, Host: h})
	if err != nil {
		rep.OpenErr = err.Error()
	} else {
		rep.Mode = dp.Mode()
		r, err := dp.ResourceStats(ctx)
		if err != nil {
			rep.OpenErr = "resource stats: " + err.Error()
		}
		rep.Rows, rep.Sessions = len(r.Resources), r.Sessions
		for _, res := range r.Resources {
			if res.Method != "" {
				rep.Methods = append(rep.Methods, res.Name+"="+res.Method)
			}
		}
		if err := dp.Close(); err != nil {
			rep.CloseErr = err.Error()
		}
	}
	if err := json.NewEncoder(w).Encode(rep); err != nil {
		return 2
	}
	return 0
}

// Linux capability numbers (linux/capability.h).
const (
	capNetAdmin = 12
	capNetRaw   = 13
	capIPCLock  = 14
	capPerfmon  = 38
	capBPF      = 39
)

// runLimited runs childMain as uid/gid 65534 with only caps, inside ns.
func runLimited(t *testing.T, ns *netlab.NS, cfg *dataplane.Config, backend string, caps []uintptr) childReport {
	t.Helper()
	// The go test binary lives in a root-only build directory: copy it
	// where the unprivileged user can execute it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "fwplane-leastpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "fwplane.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cfgJSON, _ := json.Marshal(cfg)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(exe)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), childEnv+"=1", childConfigEnv+"="+string(cfgJSON), childModeEnv+"="+backend)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: 65534, Gid: 65534},
		AmbientCaps: caps,
	}
	// The child is forked from a thread inside the firewall namespace, so
	// it starts there without needing CAP_SYS_ADMIN for setns.
	if err := ns.Do(cmd.Run); err != nil {
		t.Fatalf("child: %v\nstderr:\n%s", err, stderr.String())
	}
	var rep childReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("child report %q: %v\nstderr:\n%s", stdout.String(), err, stderr.String())
	}
	return rep
}

// TestIntegrationLeastPrivilege: with CAP_BPF + CAP_NET_ADMIN (+ CAP_PERFMON
// for the eBPF backend's map iterator, CAP_NET_RAW and CAP_IPC_LOCK for the
// userspace backend's AF_XDP sockets and pinned UMEM) and no root, the probe and both backends work;
// without them, the error names what is missing.
func TestIntegrationLeastPrivilege(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, nil)
	cfg := labConfig(l)

	t.Run("ebpf with CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON", func(t *testing.T) {
		rep := runLimited(t, l.Firewall, cfg, "ebpf", []uintptr{capBPF, capNetAdmin, capPerfmon})
		if rep.OpenErr != "" || rep.Mode != dataplane.ModeEBPF {
			t.Fatalf("Open as uid 65534 with caps: mode %q err %s", rep.Mode, rep.OpenErr)
		}
		if rep.CloseErr != "" {
			t.Errorf("Close: %s", rep.CloseErr)
		}
		if rep.Sessions == nil || rep.Rows == 0 {
			t.Errorf("ResourceStats: %d rows, sessions %v", rep.Rows, rep.Sessions)
		}
		for _, p := range []capability.ProbeName{capability.ProbeBPFSyscall, capability.ProbeXDPProgram, capability.ProbeDevMap,
			capability.ProbeLRUHash, capability.ProbeBatchOps, capability.ProbeMapIterKfunc, capability.ProbeXSKMap, capability.ProbeAFXDPSocket} {
			// AF_XDP sockets need CAP_NET_RAW, which this child lacks.
			want := capability.Available
			if p == capability.ProbeAFXDPSocket {
				want = capability.Inconclusive
			}
			if got := rep.Probes[p]; got.Status != want {
				t.Errorf("probe %s = %s, want %s", p, got, want)
			}
		}
		if r := rep.Probes[capability.ProbeAFXDPSocket]; !strings.Contains(r.Detail, "CAP_NET_RAW") {
			t.Errorf("af_xdp probe without CAP_NET_RAW does not name it: %s", r)
		}
		t.Logf("counted by: %s", strings.Join(rep.Methods, ", "))
	})

	// AF_XDP pins the UMEM and charges it to RLIMIT_MEMLOCK unless the
	// process has CAP_IPC_LOCK.
	t.Run("userspace with CAP_BPF+CAP_NET_ADMIN+CAP_NET_RAW+CAP_IPC_LOCK", func(t *testing.T) {
		rep := runLimited(t, l.Firewall, cfg, "userspace", []uintptr{capBPF, capNetAdmin, capNetRaw, capIPCLock})
		if rep.OpenErr != "" || rep.Mode != dataplane.ModeUserspace {
			t.Fatalf("Open as uid 65534 with caps: mode %q err %s", rep.Mode, rep.OpenErr)
		}
		if rep.CloseErr != "" {
			t.Errorf("Close: %s", rep.CloseErr)
		}
		if rep.Sessions == nil || rep.Rows == 0 {
			t.Errorf("ResourceStats: %d rows, sessions %v", rep.Rows, rep.Sessions)
		}
		if got := rep.Probes[capability.ProbeAFXDPSocket]; got.Status != capability.Available {
			t.Errorf("af_xdp probe with CAP_NET_RAW = %s", got)
		}
	})

	t.Run("userspace without CAP_IPC_LOCK", func(t *testing.T) {
		rep := runLimited(t, l.Firewall, cfg, "userspace", []uintptr{capBPF, capNetAdmin, capNetRaw})
		if rep.OpenErr == "" || !strings.Contains(rep.OpenErr, "CAP_IPC_LOCK") {
			t.Errorf("Open without CAP_IPC_LOCK: err %q, want one naming CAP_IPC_LOCK", rep.OpenErr)
		}
	})

	t.Run("userspace without CAP_NET_RAW", func(t *testing.T) {
		rep := runLimited(t, l.Firewall, cfg, "userspace", []uintptr{capBPF, capNetAdmin})
		if rep.OpenErr == "" || !strings.Contains(rep.OpenErr, "CAP_NET_RAW") {
			t.Errorf("Open without CAP_NET_RAW: err %q, want one naming CAP_NET_RAW", rep.OpenErr)
		}
	})

	t.Run("no capabilities", func(t *testing.T) {
		rep := runLimited(t, l.Firewall, cfg, "ebpf", nil)
		if rep.OpenErr == "" {
			t.Fatal("Open without capabilities succeeded")
		}
		for _, want := range []string{"CAP_BPF", "CAP_NET_ADMIN"} {
			if !strings.Contains(rep.OpenErr, want) {
				t.Errorf("error %q does not name %s", rep.OpenErr, want)
			}
		}
		if got := rep.Probes[capability.ProbeBPFSyscall]; got.Status != capability.Inconclusive || !strings.Contains(got.Detail, "CAP_BPF") {
			t.Errorf("bpf probe without CAP_BPF = %s, want inconclusive naming CAP_BPF", got)
		}
	})
	// Nothing the children did is left attached.
	err := l.Firewall.Do(func() error {
		return checkNoXDP(l.FwClientIf, l.FwServerIf)
	})
	if err != nil {
		t.Error(err)
	}
}
