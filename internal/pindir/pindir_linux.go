//go:build linux

package pindir

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
)

// ErrInUse is dataplane.ErrPinnedInUse: the directory is held by another
// process (or another open file of this one).
var ErrInUse = dataplane.ErrPinnedInUse

// Lock is a held pin directory.
type Lock struct {
	mu  sync.Mutex
	f   *os.File
	dir string
}

// Acquire makes dir (mode 0700, parents too) unless it exists, checks it
// is on a bpffs and takes it without waiting.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make pin directory %s: %w", dir, err)
	}
	if err := CheckBPFFS(dir); err != nil {
		return nil, err
	}
	f, err := os.Open(dir) // O_CLOEXEC: an exec'd child never inherits the hold
	if err != nil {
		return nil, fmt.Errorf("open pin directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, busy(dir)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return &Lock{f: f, dir: dir}, nil
}

// busy is the error for a directory someone else holds.
func busy(dir string) error {
	if pid, ok := Holder(dir); ok {
		return fmt.Errorf("pin directory %s: %w (pid %d%s)", dir, ErrInUse, pid, comm(pid))
	}
	return fmt.Errorf("pin directory %s: %w", dir, ErrInUse)
}

func comm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return ", " + strings.TrimSpace(string(b))
}

// Dir is the directory held.
func (l *Lock) Dir() string { return l.dir }

// Unlock lets the directory go (the pins in it stay).
func (l *Lock) Unlock() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the only reference drops the flock
	l.f = nil
	return err
}

// Holder returns the pid of a process holding dir, from /proc/locks (the
// pid that took the lock; a holder that forked may have exited and left
// its child holding it).
func Holder(dir string) (int, bool) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, false
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 7430 00:27:2247936 0 EOF"
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[1] != "FLOCK" || fs[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fs[4]); err == nil {
			return pid, true
		}
	}
	return 0, false
}

// CheckBPFFS fails unless dir (or, while it does not exist, its nearest
// existing parent) is on a bpf filesystem; the error matches
// dataplane.ErrNotSupported and says how to mount one.
func CheckBPFFS(dir string) error {
	var st unix.Statfs_t
	probe := dir
	for {
		if err := unix.Statfs(probe, &st); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			return fmt.Errorf("pin directory %s: no filesystem found", dir)
		}
		probe = parent
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin directory %s is not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf): %w", dir, dataplane.ErrNotSupported)
	}
	return nil
}
