//go:build linux

package mapcount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
)

// Walk counts a map's entries with keys-only BPF_MAP_GET_NEXT_KEY calls,
// noticing when the kernel loses the cursor (by key fingerprints) and
// resuming or beginning a new pass; see the package doc for the algorithm
// and the bound it gives under churn.
// When ctx ends, Walk returns the partial Result (Complete false) and an
// error wrapping ctx.Err(). Reaching the step cap is not an error: the
// Result is returned with Complete false.
func Walk(ctx context.Context, m *ebpf.Map, opts *WalkOptions) (Result, error) {
	start := time.Now()
	res := Result{Method: string(MethodWalk), Passes: 1}
	if m == nil {
		return res, errors.New("walk map: nil map")
	}
	if !countable(m.Type()) {
		return res, fmt.Errorf("walk %s map: %w", m.Type(), ErrNotCountable)
	}
	var o WalkOptions
	if opts != nil {
		o = *opts
	}
	limit := o.MaxSteps
	if limit == 0 {
		limit = 4 * uint64(max(m.MaxEntries(), 1))
	}

	ks := int(m.KeySize())
	buf := make([]byte, 3*ks)
	// prev and cur are the last two keys of the forward walk, next is
	// where the kernel writes; rotating the three avoids copies.
	prev, cur, next := buf[:ks:ks], buf[ks:2*ks:2*ks], buf[2*ks:]
	havePrev, haveCur := false, false

	var seen *detector
	if !o.Naive {
		seen = getDetector()
		defer putDetector(seen)
	}
	isNew := func(k []byte) bool { return seen == nil || !seen.seen(k) }

	var steps, nextCheck uint64
	nextKey := func(from []byte, ok bool) error {
		steps++
		var fromPtr any // nil asks for the first key
		if ok {
			fromPtr = unsafe.Pointer(&from[0])
		}
		return m.NextKey(fromPtr, unsafe.Pointer(&next[0]))
	}
	advance := func() { // next becomes the cursor
		prev, cur, next = cur, next, prev
		havePrev, haveCur = haveCur, true
		o.hook(cur, prev, havePrev)
	}
	finish := func(complete bool) Result {
		res.Complete = complete
		res.Steps = steps
		res.Cost = time.Since(start)
		return res
	}

	for {
		if steps >= limit {
			return finish(false), nil
		}
		if steps >= nextCheck {
			nextCheck = steps + ctxEvery
			if err := ctx.Err(); err != nil {
				return finish(false), fmt.Errorf("walk map: %w", err)
			}
		}
		err := nextKey(cur, haveCur)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return finish(true), nil
		}
		if err != nil {
			return finish(false), fmt.Errorf("walk map: %w", err)
		}
		if isNew(next) {
			res.Count++
			advance()
			continue
		}

		// A pass over the buckets never meets a key twice: the kernel lost
		// the cursor (it was deleted) and silently started again from the
		// first bucket. Resume after the key before the cursor, once.
		res.Restarts++
		if havePrev {
			err := nextKey(prev, true)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				// prev is still there and is the last key: the lost
				// cursor was the last one too.
				return finish(true), nil
			}
			if err != nil {
				return finish(false), fmt.Errorf("walk map: %w", err)
			}
			// The answer must be new and not the cursor itself: when the
			// restart was noticed late (a new key at the head of the map
			// was taken for progress), prev may be gone too and the kernel
			// answers with that first key again.
			if !bytes.Equal(next, cur) && isNew(next) {
				res.Count++
				// The lost cursor is gone; prev stays the key before the
				// new cursor.
				cur, next = next, cur
				o.hook(cur, prev, true)
				continue
			}
		}
		// prev was lost too, or the restart was noticed late (churn had
		// replaced the head of the map, so the walk took the first keys
		// for progress until it met a remembered one): where the kernel
		// now is says nothing. Begin a new pass from the first key, asked
		// for explicitly. The keys of the abandoned pass are forgotten, not
		// merged: the count is always that of one pass, so it means what a
		// walk of a quiet map means.
		seen.reset()
		res.Count = 0
		res.Passes++
		haveCur, havePrev = false, false
	}
}

func (o *WalkOptions) hook(cur, prev []byte, havePrev bool) {
	if o.afterKey == nil {
		return
	}
	if !havePrev {
		prev = nil
	}
	o.afterKey(cur, prev)
}
