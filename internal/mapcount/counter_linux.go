//go:build linux

package mapcount

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// Counter counts a set of maps, choosing per map and kernel. It is safe for
// concurrent use.
type Counter struct {
	method   Method
	kfunc    *Kfunc
	kfuncErr error
	walk     *WalkOptions
	batch    *BatchOptions

	mu      sync.Mutex
	noBatch map[ebpf.MapType]error // map types whose batch lookup failed as unsupported
}

// NewCounter prepares a Counter. With Method Auto it tries to load the kfunc
// iterator and, when the kernel lacks it, counts with batch or walk instead
// (KfuncErr says why). With Method kfunc the same failure is returned.
func NewCounter(opts *Options) (*Counter, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	c := &Counter{method: o.Method, walk: o.Walk, batch: o.Batch, noBatch: map[ebpf.MapType]error{}}
	switch c.method {
	case "", Auto:
		c.method = Auto
		c.kfunc, c.kfuncErr = NewKfunc()
	case MethodKfunc:
		k, err := NewKfunc()
		if err != nil {
			return nil, fmt.Errorf("new map counter: %w", err)
		}
		c.kfunc = k
	case MethodWalk, MethodBatch:
	default:
		return nil, fmt.Errorf("new map counter: unknown method %q", c.method)
	}
	return c, nil
}

// KfuncErr says why an Auto counter does not use the kfunc (nil when it
// does, or when another method was forced).
func (c *Counter) KfuncErr() error { return c.kfuncErr }

// Count counts every map and returns one Result per map, in order. A map
// that cannot be counted has Result.Err set: errors.Is(ErrNotCountable)
// for arrays and other types without a fill level, ebpf.ErrNotSupported
// when a forced method does not apply to its type. The error return is
// non-nil only when ctx ended; the Results then hold what was counted.
func (c *Counter) Count(ctx context.Context, maps []*ebpf.Map) ([]Result, error) {
	out := make([]Result, len(maps))
	todo := make([]int, 0, len(maps))
	for i, m := range maps {
		switch {
		case m == nil:
			out[i].Err = errors.New("count map: nil map")
		case !countable(m.Type()):
			out[i].Err = fmt.Errorf("count %s map: %w", m.Type(), ErrNotCountable)
		default:
			todo = append(todo, i)
		}
	}

	if c.kfunc != nil {
		rest, err := c.countKfunc(ctx, maps, todo, out)
		if err != nil {
			return out, err
		}
		todo = rest
	}
	for _, i := range todo {
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("count maps: %w", err)
		}
		r, err := c.countOne(ctx, maps[i])
		r.Err = err
		out[i] = r
		if ctx.Err() != nil {
			return out, fmt.Errorf("count maps: %w", ctx.Err())
		}
	}
	return out, nil
}

// countKfunc counts the maps the kfunc can count with one iterator read and
// returns the indexes left for the other methods.
func (c *Counter) countKfunc(ctx context.Context, maps []*ebpf.Map, todo []int, out []Result) ([]int, error) {
	start := time.Now()
	var rest, mine []int
	ids := make(map[int]ebpf.MapID, len(todo))
	for _, i := range todo {
		m := maps[i]
		if !kfuncCountable(m.Type()) {
			if c.method == MethodKfunc {
				out[i].Err = fmt.Errorf("count %s map with kfunc: kernel keeps no count for it: %w", m.Type(), ebpf.ErrNotSupported)
			} else {
				rest = append(rest, i)
			}
			continue
		}
		id, err := mapID(m)
		if err != nil {
			if c.method == MethodKfunc {
				out[i].Err = fmt.Errorf("count map with kfunc: %w", err)
			} else {
				rest = append(rest, i)
			}
			continue
		}
		ids[i] = id
		mine = append(mine, i)
	}
	if len(mine) == 0 {
		return rest, nil
	}
	counts, err := c.kfunc.Counts(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return rest, fmt.Errorf("count maps: %w", err)
		}
		if c.method == MethodKfunc {
			for _, i := range mine {
				out[i].Err = err
			}
			return rest, nil
		}
		return append(rest, mine...), nil
	}
	share := time.Since(start) / time.Duration(len(mine))
	for _, i := range mine {
		n, ok := counts[ids[i]]
		if !ok {
			// Should not happen for an open map; never report a made-up 0.
			if c.method == MethodKfunc {
				out[i].Err = fmt.Errorf("count map id %d with kfunc: not listed by the iterator", ids[i])
			} else {
				rest = append(rest, i)
			}
			continue
		}
		out[i] = Result{Count: n, Method: string(MethodKfunc), Complete: true, Cost: share}
	}
	return rest, nil
}

func (c *Counter) countOne(ctx context.Context, m *ebpf.Map) (Result, error) {
	if c.method == MethodWalk {
		return Walk(ctx, m, c.walk)
	}
	t := m.Type()
	c.mu.Lock()
	batchErr, known := c.noBatch[t]
	c.mu.Unlock()
	if !known {
		r, err := Batch(ctx, m, c.batch)
		if err == nil || !errors.Is(err, ebpf.ErrNotSupported) {
			return r, err
		}
		c.mu.Lock()
		c.noBatch[t] = err
		c.mu.Unlock()
		batchErr = err
	}
	if c.method == MethodBatch {
		return Result{Method: string(MethodBatch)}, batchErr
	}
	return Walk(ctx, m, c.walk)
}

// Close unloads the kfunc iterator, if any. Safe on nil and idempotent.
func (c *Counter) Close() error {
	if c == nil {
		return nil
	}
	return c.kfunc.Close()
}
