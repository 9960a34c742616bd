//go:build linux

package mapcount

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// recSize is the size of struct mapcount_rec in bpf/mapcount.c:
// u32 id, u32 pad, s64 count.
const recSize = 16

// Kfunc reads the element count the kernel keeps for every hash-type map
// with one read of an iter/bpf_map program calling bpf_map_sum_elem_count
// (kernel >= 6.6 with BTF). It is safe for concurrent use; Close may be
// called concurrently with Counts (a read already started finishes).
type Kfunc struct {
	mu   sync.Mutex
	objs *mapcountObjects
	it   *link.Iter
}

// NewKfunc loads and attaches the iterator. errors.Is(err,
// ebpf.ErrNotSupported) when the kernel lacks BTF, BPF iterators or the
// kfunc; the error says which.
func NewKfunc() (*Kfunc, error) {
	if _, err := btf.LoadKernelSpec(); err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w: %w", ebpf.ErrNotSupported, err)
	}
	spec, err := loadMapcount()
	if err != nil {
		return nil, fmt.Errorf("load map counting iterator spec: %w", err)
	}
	objs := new(mapcountObjects)
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		if errors.Is(err, unix.EPERM) {
			// A privilege problem, not a missing kernel feature.
			return nil, fmt.Errorf("load map counting iterator: %w", err)
		}
		// Unknown kfunc, unknown attach target or a verifier rejection on
		// an older kernel all mean: this kernel cannot count this way.
		return nil, fmt.Errorf("load map counting iterator (needs kernel >= 6.6 with bpf_map_sum_elem_count): %w: %w", ebpf.ErrNotSupported, err)
	}
	it, err := link.AttachIter(link.IterOptions{Program: objs.MapcountIter})
	if err != nil {
		objs.Close()
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("attach map counting iterator: %w", err)
		}
		return nil, fmt.Errorf("attach map counting iterator: %w: %w", ebpf.ErrNotSupported, err)
	}
	return &Kfunc{objs: objs, it: it}, nil
}

var readBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// Counts runs the iterator once and returns the element count of every map
// on the system, by map ID. Map types that keep no count (arrays, LPM
// tries, ...) appear with 0: use it for hash-type maps only. The per-CPU
// counters are summed without a lock, so a count can be off by the inserts
// and deletes in flight during the read (a transiently negative sum is
// reported as 0).
func (k *Kfunc) Counts(ctx context.Context) (map[ebpf.MapID]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read map counts: %w", err)
	}
	k.mu.Lock()
	if k.it == nil {
		k.mu.Unlock()
		return nil, fmt.Errorf("read map counts: %w", fs.ErrClosed)
	}
	rd, err := k.it.Open()
	k.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("open map counting iterator: %w", err)
	}
	defer rd.Close()

	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	counts := make(map[ebpf.MapID]uint64, 64)
	have := 0 // bytes of a record split across reads
	for {
		n, err := rd.Read(buf[have:])
		have += n
		whole := have - have%recSize
		for off := 0; off < whole; off += recSize {
			id := binary.LittleEndian.Uint32(buf[off:])
			c := int64(binary.LittleEndian.Uint64(buf[off+8:]))
			counts[ebpf.MapID(id)] = uint64(max(c, 0))
		}
		have = copy(buf, buf[whole:have])
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read map counting iterator: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("read map counts: %w", err)
		}
	}
	if have != 0 {
		return nil, fmt.Errorf("read map counting iterator: %d trailing bytes", have)
	}
	return counts, nil
}

// Close detaches and unloads the iterator. Safe on nil and idempotent.
func (k *Kfunc) Close() error {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.it == nil {
		return nil
	}
	err := errors.Join(k.it.Close(), k.objs.Close())
	k.it, k.objs = nil, nil
	if err != nil {
		return fmt.Errorf("close map counting iterator: %w", err)
	}
	return nil
}
