//go:build linux

package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/fwplane/fwplane/internal/netnsutil"
)

// netnsDir is where iproute2 and vishvananda/netns keep named namespaces.
const netnsDir = "/var/run/netns"

// NS is a named network namespace, bind-mounted at Path so that
// `ip netns exec Name ...` works while the lab lives.
type NS struct {
	Name string
	Path string
}

// newNS creates the named namespace without moving the caller: NewNamed
// switches the calling thread, so it runs on a thread of its own that is
// switched back (or discarded if that fails).
func newNS(name string) (*NS, error) {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			// NewNamed may have unshared before failing to mount: the
			// thread's namespace is unknown, so let the thread die locked.
			if serr := netns.Set(orig); serr == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("restore netns after creating %s: %w", name, err)
			return // locked: the runtime destroys this thread
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return &NS{Name: name, Path: filepath.Join(netnsDir, name)}, nil
}

// remove unmounts and deletes the namespace's bind mount. The namespace
// itself (and its links) goes away once nothing references it any more.
func (n *NS) remove() error {
	if n == nil {
		return nil
	}
	if err := netns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	return nil
}

// handle opens the namespace; the caller closes it.
func (n *NS) handle() (netns.NsHandle, error) {
	h, err := netns.GetFromPath(n.Path)
	if err != nil {
		return netns.None(), fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	return h, nil
}

// Do runs fn on an OS thread switched into the namespace and returns fn's
// error. The calling goroutine's own thread is never switched. Sockets and
// links created by fn belong to the namespace for their whole life.
// Goroutines fn starts run in the process's original namespace.
func (n *NS) Do(fn func() error) error {
	if n == nil {
		return errors.New("run in netns: nil namespace")
	}
	return netnsutil.Do(n.Path, fn)
}

// SetLinkUp sets the link named name in the namespace administratively up
// or down (tests flap links with it).
func (n *NS) SetLinkUp(name string, up bool) error {
	return n.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if up {
			return netlink.LinkSetUp(l)
		}
		return netlink.LinkSetDown(l)
	})
}

// String returns the namespace name.
func (n *NS) String() string {
	if n == nil {
		return "<nil>"
	}
	return n.Name
}

// NewNST creates one empty named namespace for a test that builds its own
// links, named like a lab's (role: lower-case letters) so that [Sweep]
// removes it if the test process dies before its cleanup; it sweeps first,
// as [New] does, and removes the namespace in tb.Cleanup.
func NewNST(tb testing.TB, role string) *NS {
	tb.Helper()
	owner, err := Self()
	if err != nil {
		tb.Fatalf("netns: read own start time: %v", err)
	}
	if _, err := Sweep(); err != nil {
		tb.Logf("sweep before creating a namespace: %v", err)
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		tb.Fatal(err)
	}
	ns, err := newNS(nsName(hex.EncodeToString(rnd[:]), role, owner))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := ns.remove(); err != nil {
			tb.Errorf("%v", err)
		}
	})
	return ns
}
