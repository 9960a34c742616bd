package ebpfbackend

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// DefaultReapInterval is how often idle sessions are removed when
// Options.SessionReapInterval is 0.
const DefaultReapInterval = 5 * time.Second

// The datapath treats a session idle past its timeout as gone, but the entry
// keeps its slot until the flow is seen again, the LRU evicts it or this
// reaper deletes it. Reaping keeps the sessions figures (the tables' element
// counts) equal to the live flows, give or take one interval.
func (b *Backend) reapLoop(every time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			// Errors are transient here (a walk aborted by churn); the
			// next round tries again.
			_, _ = b.reap(context.Background())
		}
	}
}

// reap deletes every idle-expired session once and returns how many.
func (b *Backend) reap(ctx context.Context) (int, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed || b.objs == nil {
		return 0, nil
	}
	var set fwFwSettings
	if err := b.objs.FwSettingsMap.Lookup(b.slot, &set); err != nil {
		return 0, fmt.Errorf("read timeouts: %w", err)
	}
	now, err := monotonicNow()
	if err != nil {
		return 0, err
	}
	n4, err4 := reapMap(ctx, b.objs.FwSessionsV4, now, set.TimeoutNs, func(k fwFwSess4Key) uint8 { return k.Proto })
	n6, err6 := reapMap(ctx, b.objs.FwSessionsV6, now, set.TimeoutNs, func(k fwFwSess6Key) uint8 { return k.Proto })
	b.reaped.Add(uint64(n4 + n6))
	return n4 + n6, errors.Join(err4, err6)
}

func reapMap[K any](ctx context.Context, m *ebpf.Map, now uint64, timeouts [4]uint64, proto func(K) uint8) (int, error) {
	var (
		k       K
		v       fwFwSessVal
		expired []K
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if now > v.LastSeenNs && now-v.LastSeenNs > timeouts[protoClass(proto(k))] {
			expired = append(expired, k)
		}
		if len(expired)%1024 == 0 && ctx.Err() != nil {
			break
		}
	}
	walkErr := it.Err()
	n := 0
	for _, k := range expired {
		// Read again just before deleting: a packet may have revived the
		// flow since the walk saw it.
		if err := m.Lookup(k, &v); err != nil || now-v.LastSeenNs <= timeouts[protoClass(proto(k))] {
			continue
		}
		if err := m.Delete(k); err == nil {
			n++
		}
	}
	if walkErr != nil {
		return n, fmt.Errorf("walk sessions: %w", walkErr)
	}
	return n, ctx.Err()
}
