// Package netnsutil runs code inside a network namespace.
//
// Linux network namespaces belong to threads, and Go moves goroutines
// between threads, so namespace-sensitive work (interface lookups, netlink
// sockets, XDP attach by ifindex, AF_XDP bind) runs on a fresh goroutine
// locked to its thread, switched into the namespace and back. If switching
// back fails the thread stays locked, so the runtime destroys it instead of
// handing a goroutine a thread in a foreign namespace.
//
// Sockets and file descriptors created inside keep their namespace after
// the function returns: use them from any goroutine.
package netnsutil

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn in the network namespace at path; an empty path runs fn in the
// caller's current namespace (still on a locked thread, so fn may rely on
// that). It is safe for concurrent use.
func Do(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- do(path, fn)
	}()
	return <-errc
}

func do(path string, fn func() error) (err error) {
	unlock := true
	defer func() {
		if unlock {
			runtime.UnlockOSThread()
		}
	}()
	if path == "" {
		return fn()
	}
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			unlock = false // poisoned thread: let it die with the goroutine
			if err == nil {
				err = fmt.Errorf("restore netns after %s: %w", path, rerr)
			}
		}
	}()
	return fn()
}
