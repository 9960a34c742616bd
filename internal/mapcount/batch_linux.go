//go:build linux

package mapcount

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// maxBatchBytes bounds the key and value buffers of one batch call, so a
// map with large values gets smaller chunks rather than a huge buffer.
const maxBatchBytes = 8 << 20

// Batch counts a map's entries with BPF_MAP_LOOKUP_BATCH. The kernel's
// hash-table batch always copies values (a NULL values buffer is EFAULT),
// so keys-only is not possible; the buffers are allocated once per call
// and handed to the kernel without copies. The cursor is a bucket index,
// so unlike a next-key walk a batch never restarts under churn; each
// bucket is read under its lock.
//
// errors.Is(err, ebpf.ErrNotSupported) when the kernel has no batch
// lookup for the map type (e.g. LPM tries); the caller falls back to Walk.
// When ctx ends, Batch returns the partial Result and an error wrapping
// ctx.Err().
func Batch(ctx context.Context, m *ebpf.Map, opts *BatchOptions) (Result, error) {
	start := time.Now()
	res := Result{Method: string(MethodBatch)}
	if m == nil {
		return res, errors.New("batch lookup map: nil map")
	}
	if !countable(m.Type()) {
		return res, fmt.Errorf("batch lookup %s map: %w", m.Type(), ErrNotCountable)
	}
	if !batchCountable(m.Type()) {
		// Other types (LPM tries since 6.x) answer batch lookups with the
		// kernel's generic next-key loop, which restarts under churn like a
		// walk but without Walk's de-duplication: counting them that way
		// would be less honest than Walk, so it is refused.
		return res, fmt.Errorf("batch lookup %s map: only hash maps have a bucket cursor: %w", m.Type(), ebpf.ErrNotSupported)
	}
	chunk := defaultChunk
	if opts != nil && opts.ChunkSize > 0 {
		chunk = opts.ChunkSize
	}

	ks := int(m.KeySize())
	vs := int(m.ValueSize())
	copies := 1
	if perCPU(m.Type()) {
		// The kernel writes one 8-byte aligned value per possible CPU.
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return res, fmt.Errorf("batch lookup map: %w", err)
		}
		vs, copies = (vs+7)&^7, n
	}
	perEntry := ks + vs*copies
	chunk = max(min(chunk, maxBatchBytes/max(perEntry, 1)), 1)

	// Slices of [size]byte arrays: cilium/ebpf counts batch elements by
	// slice length and passes such slices to the kernel without copying.
	alloc := func(n int) (keys, values any) {
		return elemSlices(make([]byte, n*ks), ks), elemSlices(make([]byte, n*copies*vs), vs)
	}
	keys, values := alloc(chunk)

	var cursor ebpf.MapBatchCursor
	for {
		if err := ctx.Err(); err != nil {
			res.Cost = time.Since(start)
			return res, fmt.Errorf("batch lookup map: %w", err)
		}
		n, err := m.BatchLookup(&cursor, keys, values, nil)
		res.Steps++
		res.Count += uint64(n)
		switch {
		case err == nil:
			continue
		case errors.Is(err, ebpf.ErrKeyNotExist):
			res.Complete = true
			res.Cost = time.Since(start)
			return res, nil
		case errors.Is(err, unix.ENOSPC) && n == 0 && chunk < int(max(m.MaxEntries(), 1)):
			// One bucket holds more entries than a chunk: retry the same
			// bucket with a bigger buffer.
			chunk *= 2
			keys, values = alloc(chunk)
			continue
		}
		res.Cost = time.Since(start)
		return res, fmt.Errorf("batch lookup %s map: %w", m.Type(), err)
	}
}

// elemSlices views buf as a slice of [size]byte elements, the shape
// cilium/ebpf's batch calls count by and pass to the kernel without copying.
func elemSlices(buf []byte, size int) any {
	n := len(buf) / size
	arr := reflect.ArrayOf(size, reflect.TypeFor[byte]())
	if n == 0 {
		return reflect.MakeSlice(reflect.SliceOf(arr), 0, 0).Interface()
	}
	return reflect.SliceAt(arr, unsafe.Pointer(unsafe.SliceData(buf)), n).Interface()
}

// batchCountable reports whether the map type's batch lookup walks buckets
// (__htab_map_lookup_and_delete_batch) rather than next keys.
func batchCountable(t ebpf.MapType) bool {
	switch t {
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.HashOfMaps:
		return true
	}
	return false
}

func perCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.PerCPUArray, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}
