//go:build linux

package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/internal/testutil"
)

const holdEnv = "FWPLANE_NETLAB_HOLD_LAB"

// TestHelperProcessHoldsLab is not a test: run by
// TestIntegrationSweepRemovesKilledLab as a separate process, it makes a
// lab, starts a process inside its server namespace that outlives it (as
// an iperf3 server would, without Pdeathsig), prints the namespaces and
// that process, and blocks until killed.
func TestHelperProcessHoldsLab(t *testing.T) {
	if os.Getenv(holdEnv) != "1" {
		return
	}
	l, err := New(context.Background(), nil)
	if err != nil {
		fmt.Printf("ERROR %v\n", err)
		os.Exit(1)
	}
	child := exec.Command("sleep", "600")
	if err := l.Server.Do(child.Start); err != nil {
		fmt.Printf("ERROR %v\n", err)
		os.Exit(1)
	}
	// A pinned map, as a test of pinned dataplanes would leave.
	dir := PinDir(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err == nil {
		err = m.Pin(filepath.Join(dir, "map"))
	}
	if err != nil {
		fmt.Printf("ERROR %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("LAB %d %s %s %s %s\n", child.Process.Pid, dir, l.Client.Name, l.Firewall.Name, l.Server.Name)
	select {}
}

type holder struct {
	cmd    *exec.Cmd
	nss    []string
	pinDir string
	child  Owner
}

// startHolder execs the test binary as a lab-holding helper.
func startHolder(t *testing.T) *holder {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcessHoldsLab$", "-test.count=1")
	cmd.Env = append(os.Environ(), holdEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if h.child.PID != 0 {
			syscall.Kill(h.child.PID, syscall.SIGKILL)
		}
		Sweep()
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "LAB ") || strings.HasPrefix(sc.Text(), "ERROR ") {
				line <- sc.Text()
				return
			}
		}
		line <- "ERROR helper exited: " + fmt.Sprint(sc.Err())
	}()
	select {
	case l := <-line:
		f := strings.Fields(l)
		if f[0] != "LAB" || len(f) != 6 {
			t.Fatalf("helper: %s", l)
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil {
			t.Fatal(err)
		}
		start, err := processStart(pid)
		if err != nil {
			t.Fatalf("helper's child: %v", err)
		}
		h.child, h.pinDir, h.nss = Owner{PID: pid, Start: start}, f[2], f[3:]
	case <-time.After(30 * time.Second):
		t.Fatal("helper made no lab in 30s")
	}
	return h
}

// ipNetnsList is `ip netns list`, names only.
func ipNetnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// running reports whether o runs and is not a zombie.
func running(o Owner) bool {
	if !o.Alive() {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", o.PID))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(string(b[i+1:])), "Z")
}

// TestIntegrationSweepRemovesKilledLab kills a process holding a lab with
// SIGKILL, while another holder stays alive; the next lab's start removes
// the dead one's namespaces (as `ip netns list` shows) and the process it
// left inside them (and its pin directory), and leaves the live holder's
// lab alone.
func TestIntegrationSweepRemovesKilledLab(t *testing.T) {
	testutil.Privileged(t, testutil.NeedNetNS, testutil.NeedBPF)
	testutil.Command(t, "ip", "iproute2")
	live := startHolder(t)
	// Every process that makes a lab sweeps first, so a test binary of
	// another package (or another checkout) running at the same time may
	// sweep the killed lab, or part of it, before this test's New does:
	// then this attempt shows nothing about New, and is made again.
	var (
		dead   *holder
		l      *Lab
		listed []string
	)
	for attempt := 1; ; attempt++ {
		dead = startHolder(t)
		if err := dead.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		dead.cmd.Wait()
		raced := ""
		for _, n := range dead.nss {
			if !slices.Contains(ipNetnsList(t), n) {
				raced = "namespace " + n + " of the killed lab was gone before New"
			}
		}
		if raced == "" {
			l = NewT(t, nil)
			listed = ipNetnsList(t)
			for _, n := range dead.nss {
				if !slices.Contains(listed, n) && !slices.Contains(l.Swept.Namespaces, n) {
					raced = "namespace " + n + " was swept by another process during New"
				}
			}
		}
		if raced == "" {
			break
		}
		if attempt == 3 {
			t.Fatalf("%s, three times: no attempt could show New's own sweep", raced)
		}
		t.Logf("attempt %d: %s (another process's sweep); again", attempt, raced)
	}
	for _, n := range dead.nss {
		if slices.Contains(listed, n) {
			t.Errorf("namespace %s of the killed lab is still listed by ip netns list", n)
		}
		if !slices.Contains(l.Swept.Namespaces, n) {
			t.Errorf("New's sweep does not report %s: %+v", n, l.Swept)
		}
	}
	for _, n := range live.nss {
		if !slices.Contains(listed, n) {
			t.Errorf("namespace %s of a live lab was removed", n)
		}
	}
	if !slices.Contains(l.Swept.Processes, dead.child.PID) {
		t.Errorf("sweep did not kill the process left in the killed lab (pid %d): %+v", dead.child.PID, l.Swept)
	}
	deadline := time.Now().Add(5 * time.Second)
	for running(dead.child) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if running(dead.child) {
		t.Errorf("process %d left in the killed lab still runs", dead.child.PID)
	}
	if !running(live.child) {
		t.Errorf("process %d in the live lab was killed", live.child.PID)
	}
	if _, err := os.Stat(dead.pinDir); !errors.Is(err, os.ErrNotExist) || !slices.Contains(l.Swept.PinDirs, dead.pinDir) {
		t.Errorf("pin dir %s of the killed process: stat %v; sweep %+v", dead.pinDir, err, l.Swept)
	}
	if _, err := os.Stat(filepath.Join(live.pinDir, "map")); err != nil {
		t.Errorf("pinned map of the live process: %v", err)
	}

	// Once its owner dies, the other lab goes too.
	live.cmd.Process.Signal(syscall.SIGKILL)
	live.cmd.Wait()
	res, err := Sweep()
	if err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(live.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir %s after its owner died: %v", live.pinDir, err)
	}
	listed = ipNetnsList(t)
	for _, n := range live.nss {
		if slices.Contains(listed, n) {
			t.Errorf("namespace %s: still listed after its owner died; sweep %+v", n, res)
		} else if !slices.Contains(res.Namespaces, n) {
			t.Logf("namespace %s was swept by another process first", n)
		}
	}
}

func TestNamesCarryOwner(t *testing.T) {
	o := Owner{PID: 4242, Start: 987654321}
	name := nsName("1a2b3c", "firewall", o)
	if got, ok := ownerOf(nsNameRE, name); !ok || got != o {
		t.Errorf("ownerOf(%q) = %v, %v; want %v", name, got, ok, o)
	}
	for _, n := range []string{"fwp-1a2b3c-client", "fwp-1a2b3c-client-12", "fwp-zzzzzz-client-1-2", "other-1a2b3c-client-1-2", "fwp-1a2b3c-client-1-2x"} {
		if got, ok := ownerOf(nsNameRE, n); ok {
			t.Errorf("ownerOf(%q) = %v, want no owner (never swept)", n, got)
		}
	}
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if !self.Alive() {
		t.Errorf("Self %v not alive", self)
	}
	if (Owner{PID: self.PID, Start: self.Start + 1}).Alive() {
		t.Error("an owner with this pid but another start time is alive")
	}
}
