//go:build linux

package diagnose

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// ReadLinks returns every interface of the network namespace at nsPath
// ("" = the caller's) with its state and kernel statistics.
func ReadLinks(nsPath string) ([]Link, error) {
	h := &netlink.Handle{}
	if nsPath != "" {
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			return nil, fmt.Errorf("open namespace %s: %w", nsPath, err)
		}
		defer ns.Close()
		if h, err = netlink.NewHandleAt(ns); err != nil {
			return nil, fmt.Errorf("netlink in %s: %w", nsPath, err)
		}
		defer h.Close()
	}
	ls, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		li := Link{Name: a.Name, Index: a.Index, Up: a.Flags&net.FlagUp != 0, Carrier: a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown,
			Loopback: a.Flags&net.FlagLoopback != 0}
		if s := a.Statistics; s != nil {
			li.RXPackets, li.RXDropped = s.RxPackets, s.RxDropped
			li.TXPackets, li.TXDropped, li.TXErrors = s.TxPackets, s.TxDropped, s.TxErrors
		}
		out = append(out, li)
	}
	return out, nil
}
