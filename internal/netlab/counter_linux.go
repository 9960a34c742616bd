//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/cilium/ebpf/link"
)

// CounterOptions selects what a [Counter] counts; nil counts every frame
// and passes it on.
type CounterOptions struct {
	// Proto counts only IPv4/IPv6 packets of this L4 protocol (e.g. 17
	// for UDP); 0 means any.
	Proto uint8
	// DstPort counts only UDP/TCP packets to this destination port; 0
	// means any.
	DstPort uint16
	// Drop drops the counted frames (XDP_DROP) so a flood never reaches
	// the stack; frames that do not match always pass.
	Drop bool
}

// Counter counts the frames arriving on one interface with an XDP program
// (netlab_count.c) and a per-CPU array. It is safe for concurrent use.
type Counter struct {
	mu     sync.Mutex
	objs   netlabCountObjects
	link   link.Link
	closed bool
}

// AttachCounter attaches a counter to iface in ns, in native (driver) mode
// when the interface supports it. Any XDP program already attached to the
// interface makes it fail (EBUSY): the counter never replaces one.
func AttachCounter(ns *NS, iface string, opts *CounterOptions) (*Counter, error) {
	if opts == nil {
		opts = &CounterOptions{}
	}
	spec, err := loadNetlabCount()
	if err != nil {
		return nil, fmt.Errorf("load counter spec: %w", err)
	}
	for name, v := range map[string]any{
		"filter_proto": opts.Proto,
		"filter_dport": opts.DstPort,
		"drop_matched": boolByte(opts.Drop),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set counter %s: %w", name, err)
		}
	}
	c := &Counter{}
	if err := spec.LoadAndAssign(&c.objs, nil); err != nil {
		return nil, fmt.Errorf("load counter: %w", err)
	}
	err = ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", iface, ns, err)
		}
		c.link, err = link.AttachXDP(link.XDPOptions{Program: c.objs.NetlabCount, Interface: ifc.Index})
		if err != nil {
			return fmt.Errorf("attach counter to %s in %s: %w", iface, ns, err)
		}
		return nil
	})
	if err != nil {
		c.objs.Close()
		return nil, err
	}
	return c, nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// Read returns the frames and bytes counted so far, summed over CPUs.
func (c *Counter) Read() (pkts, bytes uint64, err error) {
	if c == nil {
		return 0, 0, errors.New("read counter: nil counter")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, 0, fmt.Errorf("read counter: %w", net.ErrClosed)
	}
	var per []netlabCountNetlabCounts
	if err := c.objs.Counts.Lookup(uint32(0), &per); err != nil {
		return 0, 0, fmt.Errorf("read counter: %w", err)
	}
	for _, v := range per {
		pkts += v.Packets
		bytes += v.Bytes
	}
	return pkts, bytes, nil
}

// Close detaches the program and frees the map. It is safe on nil and
// idempotent.
func (c *Counter) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var err error
	if c.link != nil {
		err = c.link.Close()
	}
	return errors.Join(err, c.objs.Close())
}
