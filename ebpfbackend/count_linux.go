package ebpfbackend

import (
	"context"
	"time"

	"github.com/cilium/ebpf"
)

// countResult is one map's fill as ResourceStats reports it.
type countResult struct {
	count    uint64
	method   string
	cost     time.Duration
	complete bool
	restarts uint32
	err      error
}

// countMaps counts maps with the backend's mapcount.Counter. The error is
// non-nil only when ctx ended.
func (b *Backend) countMaps(ctx context.Context, maps []*ebpf.Map) ([]countResult, error) {
	res, err := b.counter.Count(ctx, maps)
	out := make([]countResult, len(res))
	for i, r := range res {
		out[i] = countResult{count: r.Count, method: r.Method, cost: r.Cost, complete: r.Complete, restarts: r.Restarts, err: r.Err}
	}
	return out, err
}
