package control

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

var (
	// ErrInUse means another server answers on the socket path.
	ErrInUse = errors.New("control socket in use")
	// ErrNotRunning means no server answers on the socket path.
	ErrNotRunning = errors.New("no daemon listening")
)

// Listen opens the control socket at path (see the package documentation
// for what it checks and the permissions it sets). Closing the returned
// listener removes path if it is still this listener's socket.
func Listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("listen on control socket: empty path")
	}
	path = filepath.Clean(path)
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create socket directory: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("check socket directory: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}

	// Bind under a private name, restrict it, then link it into place:
	// the public path never exists with the umask's permissions, and
	// link(2) fails if someone else got there first.
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	defer os.Remove(tmp)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict control socket: %w", err)
	}
	if err := os.Link(tmp, path); err != nil {
		ln.Close()
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("listen on %s: %w", path, ErrInUse)
		}
		return nil, fmt.Errorf("publish control socket: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("stat control socket: %w", err)
	}
	return &listener{UnixListener: ln, path: path, fi: fi}, nil
}

// removeStale removes a socket at path that nobody answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check control socket: %w", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		// Never delete something that is not ours to delete.
		return fmt.Errorf("listen on %s: exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("listen on %s: %w (is another fwd running?)", path, ErrInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check control socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale control socket: %w", err)
	}
	return nil
}

type listener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
	once sync.Once
	err  error
}

// Addr reports the public path, not the temporary bind name.
func (l *listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *listener) Close() error {
	l.once.Do(func() {
		l.err = l.UnixListener.Close()
		// A successor may have replaced a path we lost: leave theirs.
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.fi) {
			if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				l.err = errors.Join(l.err, fmt.Errorf("remove control socket: %w", err))
			}
		}
	})
	return l.err
}
