package diagnose

import (
	"context"
	"fmt"
	"time"

	"github.com/fwplane/fwplane/dataplane"
)

// DefaultWindow is the span counter deltas are taken over.
const DefaultWindow = 2 * time.Second

// GatherOptions say where to read; nil means defaults.
type GatherOptions struct {
	// Window between the two readings; 0 means DefaultWindow.
	Window time.Duration
	// NetNS is the path of the dataplane's network namespace ("" = the
	// caller's).
	NetNS string
	// Links reads the interfaces; nil means ReadLinks(NetNS). Tests and
	// non-Linux callers set their own.
	Links func() ([]Link, error)
}

// Gather takes two snapshots of dp and its namespace, a window apart, and
// returns them as an Input (the caller adds Decision, Managed and
// Thresholds). It returns early with ctx's error when ctx ends.
func Gather(ctx context.Context, dp dataplane.DataPlane, opts *GatherOptions) (Input, error) {
	o := GatherOptions{}
	if opts != nil {
		o = *opts
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	links := o.Links
	if links == nil {
		ns := o.NetNS
		links = func() ([]Link, error) { return ReadLinks(ns) }
	}
	snap := func() (Snapshot, error) {
		s := Snapshot{Time: time.Now()}
		rep, err := dp.ResourceStats(ctx)
		if err != nil {
			return s, fmt.Errorf("read resources: %w", err)
		}
		s.Report = rep
		if s.Links, err = links(); err != nil {
			return s, fmt.Errorf("read interface statistics: %w", err)
		}
		return s, nil
	}
	var in Input
	var err error
	if in.Before, err = snap(); err != nil {
		return in, err
	}
	t := time.NewTimer(o.Window)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return in, fmt.Errorf("diagnose: %w", ctx.Err())
	case <-t.C:
	}
	if in.After, err = snap(); err != nil {
		return in, err
	}
	return in, nil
}
