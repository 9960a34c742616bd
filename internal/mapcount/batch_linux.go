//go:build linux

package mapcount

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// maxBatchBytes bounds the key and value buffers of one batch call, so a
// map with large values gets smaller chunks rather than a huge buffer.
const maxBatchBytes = 8 << 20

// maxBatchWorkers caps the default number of Batch workers.
const maxBatchWorkers = 4

// Batch counts a map's entries with BPF_MAP_LOOKUP_BATCH. The kernel's
// hash-table batch always copies values (a NULL values buffer is EFAULT),
// so keys-only is not possible; the buffers are allocated once per call
// and handed to the kernel without copies. The cursor is a bucket index,
// so unlike a next-key walk a batch never restarts under churn; each
// bucket is read under its lock.
//
// Because the cursor is a bucket index, the bucket range can be split:
// with more than one worker (BatchOptions.Workers), each goroutine starts
// at its own bucket and stops where the next one began. A chunk returns
// whole buckets, so the last chunk of a range reaches a little into the
// next one; those keys are read by both workers and subtracted once (the
// keys of that chunk that the next worker's first chunks also returned).
// The split is taken only for a map whose first chunk shows it dense
// enough that a chunk spans a small part of a range; otherwise, and if
// churn ever makes the overlap undecidable, the count is one sequential
// pass.
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
	workers := min(runtime.GOMAXPROCS(0), maxBatchWorkers)
	if opts != nil {
		if opts.ChunkSize > 0 {
			chunk = opts.ChunkSize
		}
		if opts.Workers > 0 {
			workers = opts.Workers
		}
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
	b := batcher{fd: m.FD(), ks: ks, vs: vs * copies, maxEntries: int(max(m.MaxEntries(), 1))}

	finish := func(parts []batchPart) (Result, error) {
		res.Cost = time.Since(start)
		res.Workers = uint32(len(parts))
		res.Complete = true
		var err error
		for i := range parts {
			res.Count += parts[i].count
			res.Steps += parts[i].steps
			if parts[i].err != nil {
				res.Complete = false
				err = errors.Join(err, parts[i].err)
			}
		}
		if err != nil {
			return res, fmt.Errorf("batch lookup %s map: %w", m.Type(), err)
		}
		return res, nil
	}

	// The first chunk, from bucket 0, tells how many buckets a chunk spans.
	// htab_map_alloc sizes the table to max entries rounded up to a power
	// of two; the split only balances the work by it (any start below the
	// real size is correct).
	buckets := nextPow2(uint32(b.maxEntries))
	first := b.run(ctx, 0, 0, chunk, 0, true)
	if first.err != nil || first.done || workers < 2 || uint64(first.cursor)*uint64(workers)*8 > uint64(buckets) {
		if !first.done && first.err == nil {
			b.resume(ctx, &first, 0, chunk)
		}
		return finish([]batchPart{first})
	}

	parts := make([]batchPart, workers)
	parts[0] = first
	bounds := make([]uint32, workers+1)
	for i := range workers {
		bounds[i] = uint32(uint64(buckets) * uint64(i) / uint64(workers))
	}
	var wg sync.WaitGroup
	for i := 1; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[i] = b.run(ctx, bounds[i], bounds[i+1], chunk, 2*chunk, false)
		}()
	}
	b.resume(ctx, &parts[0], bounds[1], chunk)
	wg.Wait()

	// Subtract, at each boundary, the keys that the last chunk before it
	// and the first chunks after it both returned.
	for i := 0; i+1 < workers; i++ {
		p, next := &parts[i], &parts[i+1]
		if p.err != nil || next.err != nil {
			return finish(parts)
		}
		// Decidable when the last chunk ended inside the next range and
		// inside what the next worker kept of its first chunks.
		if p.done || (i+2 < workers && p.cursor > bounds[i+2]) || (!next.headAll && p.cursor > next.headEnd) {
			seq := b.run(ctx, 0, 0, chunk, 0, true)
			if !seq.done && seq.err == nil {
				b.resume(ctx, &seq, 0, chunk)
			}
			for j := range parts {
				seq.steps += parts[j].steps
			}
			return finish([]batchPart{seq})
		}
		seen := make(map[string]struct{}, len(next.head)/ks)
		for k := 0; k+ks <= len(next.head); k += ks {
			seen[string(next.head[k:k+ks])] = struct{}{}
		}
		for k := 0; k+ks <= len(p.last); k += ks {
			if _, ok := seen[string(p.last[k:k+ks])]; ok {
				p.count--
			}
		}
	}
	return finish(parts)
}

// batcher issues BPF_MAP_LOOKUP_BATCH on one map. The syscall is made
// here rather than through (*ebpf.Map).BatchLookup because cilium/ebpf's
// MapBatchCursor is opaque: a split count must start a worker at a bucket
// of its choosing. The attribute layout is the kernel's union bpf_attr
// batch member; for hash maps the cursor is a __u32 bucket index.
type batcher struct {
	fd         int
	ks, vs     int // key size, value bytes per entry (all CPUs' copies)
	maxEntries int
}

// batchPart is what one worker counted over its range.
type batchPart struct {
	count, steps uint64
	cursor       uint32 // next bucket after the last chunk
	done         bool   // reached the end of the map
	last         []byte // keys of the chunk that crossed the range's end
	head         []byte // keys of the first chunks (kept for the previous range's overlap)
	headEnd      uint32 // cursor after the last chunk kept in head
	headAll      bool   // head holds every chunk up to the end of the range or map
	err          error

	keys, values []byte
}

type batchAttr struct {
	inBatch, outBatch, keys, values uint64
	count, mapFD                    uint32
	elemFlags, flags                uint64
}

const bpfMapLookupBatch = 24 // BPF_MAP_LOOKUP_BATCH

// lookup fetches up to len(keys)/ks entries from bucket in (nil: from the
// start). It returns the entries fetched, the next bucket and the errno
// (ENOENT once the table's end is reached, with entries possibly fetched).
func (b *batcher) lookup(in *uint32, keys, values []byte) (int, uint32, error) {
	var out uint32
	attr := batchAttr{
		inBatch:  uint64(uintptr(unsafe.Pointer(in))),
		outBatch: uint64(uintptr(unsafe.Pointer(&out))),
		keys:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(keys)))),
		values:   uint64(uintptr(unsafe.Pointer(unsafe.SliceData(values)))),
		count:    uint32(len(keys) / b.ks),
		mapFD:    uint32(b.fd),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, bpfMapLookupBatch, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(in)
	runtime.KeepAlive(keys)
	runtime.KeepAlive(values)
	if errno != 0 {
		return int(attr.count), out, errno
	}
	return int(attr.count), out, nil
}

// run counts from bucket from until the cursor reaches end (0: the map's
// end), keeping the keys of the first chunks until retain entries are
// kept. With once, it stops after the first chunk (resume continues).
func (b *batcher) run(ctx context.Context, from, end uint32, chunk, retain int, once bool) batchPart {
	p := batchPart{cursor: from, headEnd: from}
	p.keys, p.values = make([]byte, chunk*b.ks), make([]byte, chunk*b.vs)
	b.loop(ctx, &p, end, chunk, retain, once)
	return p
}

// resume continues p until the cursor reaches end (0: the map's end).
func (b *batcher) resume(ctx context.Context, p *batchPart, end uint32, chunk int) {
	b.loop(ctx, p, end, len(p.keys)/b.ks, 0, false)
}

func (b *batcher) loop(ctx context.Context, p *batchPart, end uint32, chunk, retain int, once bool) {
	for {
		if err := ctx.Err(); err != nil {
			p.err = err
			return
		}
		var in *uint32
		if p.cursor != 0 {
			cur := p.cursor
			in = &cur
		}
		n, out, err := b.lookup(in, p.keys, p.values)
		p.steps++
		if errors.Is(err, unix.ENOSPC) && n == 0 && chunk < b.maxEntries {
			// One bucket holds more entries than a chunk: retry the same
			// bucket with bigger buffers.
			chunk *= 2
			p.keys, p.values = make([]byte, chunk*b.ks), make([]byte, chunk*b.vs)
			continue
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			p.err = err
			return
		}
		p.count += uint64(n)
		got := p.keys[:n*b.ks]
		if retain > 0 && len(p.head) < retain*b.ks {
			p.head = append(p.head, got...)
			p.headEnd = out
			if err != nil || (end != 0 && out >= end) {
				p.headAll = true
			}
		}
		if err != nil { // ENOENT: the end of the table
			p.done = true
			p.cursor = out
			return
		}
		p.cursor = out
		if end != 0 && out >= end {
			p.last = append([]byte(nil), got...)
			return
		}
		if once {
			return
		}
	}
}

func nextPow2(v uint32) uint32 {
	if v <= 1 {
		return 1
	}
	r := uint32(1)
	for r < v && r != 1<<31 {
		r <<= 1
	}
	return r
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
