//go:build linux

package netlab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Owner marks what a process creates so that a later process can tell
// whether its creator still runs: the pid and the start time of the
// process (in clock ticks since boot, field 22 of /proc/<pid>/stat), which
// together never name two processes of one boot.
type Owner struct {
	PID   int
	Start uint64
}

func (o Owner) String() string { return fmt.Sprintf("%d-%d", o.PID, o.Start) }

// Alive reports whether the process o names still runs. A pid now held
// by another process (another start time) is not o.
func (o Owner) Alive() bool {
	start, err := processStart(o.PID)
	return err == nil && start == o.Start
}

var (
	selfOnce  sync.Once
	selfOwner Owner
	selfErr   error
)

// Self is the calling process as an Owner.
func Self() (Owner, error) {
	selfOnce.Do(func() {
		pid := os.Getpid()
		start, err := processStart(pid)
		selfOwner, selfErr = Owner{PID: pid, Start: start}, err
	})
	return selfOwner, selfErr
}

// processStart reads a process's start time from /proc/<pid>/stat.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces
	// and parentheses: fields are counted after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat start time: %w", pid, err)
	}
	return start, nil
}

// nsName is a lab namespace's name: the lab's suffix, the role and the
// owner, e.g. fwp-1a2b3c-client-4242-987654.
func nsName(suffix, role string, o Owner) string {
	return fmt.Sprintf("fwp-%s-%s-%s", suffix, role, o)
}

// nsNameRE matches nsName. Names from before owners were recorded
// (fwp-<suffix>-<role>) do not match: their owner cannot be checked, so
// they are never swept.
var nsNameRE = regexp.MustCompile(`^fwp-[0-9a-f]{6}-[a-z]+-([0-9]+)-([0-9]+)$`)

// ownerOf parses the owner out of a name made by nsName or pinDirName.
func ownerOf(re *regexp.Regexp, name string) (Owner, bool) {
	m := re.FindStringSubmatch(name)
	if m == nil {
		return Owner{}, false
	}
	pid, err1 := strconv.Atoi(m[1])
	start, err2 := strconv.ParseUint(m[2], 10, 64)
	if err1 != nil || err2 != nil {
		return Owner{}, false
	}
	return Owner{PID: pid, Start: start}, true
}

// PinRoot is the bpffs directory under which [PinDir] makes the pin
// directories of tests.
const PinRoot = "/sys/fs/bpf/fwplane-test"

// pinDirRE matches the directories PinDir makes: <pid>-<start>-<random>.
var pinDirRE = regexp.MustCompile(`^([0-9]+)-([0-9]+)-[0-9a-f]{8}$`)

// PinDir makes a fresh bpffs directory for a test to pin programs, links
// and maps in, named with the calling process as its owner, and removes it
// with everything pinned in it in tb.Cleanup. If the process dies first,
// the next [Sweep] (every new lab runs one) removes it, which unpins what
// it holds. When /sys/fs/bpf is not a bpffs mount (a machine without
// systemd), PinDir mounts one there, as systemd would, and leaves it
// mounted: other processes may pin in it.
func PinDir(tb testing.TB) string {
	tb.Helper()
	dir, err := MakePinDir()
	if err != nil {
		tb.Fatalf("pin dir: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("remove pin dir: %v", err)
		}
	})
	return dir
}

// MakePinDir is [PinDir] for a program (examples/lab --pin): it makes the
// directory, named with the calling process as its owner, and leaves its
// removal to the caller, or to the next [Sweep] once the process is dead.
func MakePinDir() (string, error) {
	o, err := Self()
	if err != nil {
		return "", err
	}
	if err := ensureBPFFS(filepath.Dir(PinRoot)); err != nil {
		return "", err
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	dir := filepath.Join(PinRoot, fmt.Sprintf("%s-%s", o, hex.EncodeToString(rnd[:])))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, nil
}

// ensureBPFFS mounts a bpffs at dir unless one is there already. A lock
// file keeps two of our processes from both mounting one (the second mount
// would hide what was pinned in the first).
func ensureBPFFS(dir string) error {
	lock, err := os.OpenFile("/run/fwplane-bpffs.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("open bpffs lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock bpffs lock: %w", err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not a bpffs mount after mounting one (statfs: %v)", dir, err)
	}
	return nil
}

// SweepResult is what a [Sweep] removed.
type SweepResult struct {
	// Namespaces of labs whose owner had died, removed with their veths.
	Namespaces []string
	// Processes that still ran inside those namespaces (e.g. an iperf3
	// server the dead owner started), killed so the namespaces go.
	Processes []int
	// PinDirs under PinRoot whose owner had died, removed with their pins.
	PinDirs []string
}

// Empty reports whether nothing was removed.
func (r SweepResult) Empty() bool {
	return len(r.Namespaces) == 0 && len(r.Processes) == 0 && len(r.PinDirs) == 0
}

// Sweep removes what dead processes' labs left behind: namespaces named by
// nsName whose owner no longer runs (their veths go with them: a lab never
// puts a veth in the root namespace), any process still running inside
// them, and pin directories under PinRoot whose owner no longer runs.
// What a live process owns, and names it cannot parse, it never touches,
// so labs of parallel test binaries are safe. Several processes may sweep
// at once: what another removed first is not an error.
func Sweep() (SweepResult, error) {
	var res SweepResult
	var errs []error
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("sweep: list %s: %w", netnsDir, err)
	}
	var dead []string
	for _, e := range entries {
		if o, ok := ownerOf(nsNameRE, e.Name()); ok && !o.Alive() {
			dead = append(dead, e.Name())
		}
	}
	if len(dead) > 0 {
		inodes := map[nsID]string{}
		for _, name := range dead {
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(netnsDir, name), &st); err == nil {
				inodes[nsID{st.Dev, st.Ino}] = name
			}
		}
		pids, err := processesIn(inodes)
		errs = append(errs, err)
		for _, pid := range pids {
			if err := unix.Kill(pid, syscall.SIGKILL); err == nil {
				res.Processes = append(res.Processes, pid)
			}
		}
		for _, name := range dead {
			err := netns.DeleteNamed(name)
			if _, serr := os.Lstat(filepath.Join(netnsDir, name)); errors.Is(serr, os.ErrNotExist) {
				// Gone, whoever removed it.
				if err == nil {
					res.Namespaces = append(res.Namespaces, name)
				}
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("sweep: delete netns %s: %w", name, err))
			}
		}
	}
	pins, err := os.ReadDir(PinRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("sweep: list %s: %w", PinRoot, err))
	}
	for _, e := range pins {
		if o, ok := ownerOf(pinDirRE, e.Name()); ok && !o.Alive() {
			p := filepath.Join(PinRoot, e.Name())
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, fmt.Errorf("sweep: remove %s: %w", p, err))
				continue
			}
			res.PinDirs = append(res.PinDirs, p)
		}
	}
	return res, errors.Join(errs...)
}

// nsID identifies a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

// processesIn lists the processes whose network namespace is one of
// inodes.
func processesIn(inodes map[nsID]string) ([]int, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("sweep: list /proc: %w", err)
	}
	self := os.Getpid()
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join("/proc", p.Name(), "ns", "net"), &st); err != nil {
			continue // exited, or a kernel thread
		}
		if _, ok := inodes[nsID{st.Dev, st.Ino}]; ok {
			out = append(out, pid)
		}
	}
	return out, nil
}
