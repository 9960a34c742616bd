package mapcount

import (
	"errors"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/dataplane"
)

// ErrNotCountable is returned for map types whose fill level means nothing:
// every slot of an array, per-CPU array, devmap or xskmap always exists, so
// the caller reports their capacity without a utilisation.
var ErrNotCountable = errors.New("map type has no fill level to count")

// Method selects how maps are counted.
type Method string

// Counting methods. The non-Auto values equal the dataplane.Method*
// strings so a Result can be copied into a dataplane.Resource as is.
const (
	// Auto picks per map and kernel: kfunc, else batch, else walk.
	Auto        Method = "auto"
	MethodWalk  Method = dataplane.MethodWalk
	MethodBatch Method = dataplane.MethodBatch
	MethodKfunc Method = dataplane.MethodKfunc
)

// Result of counting one map.
type Result struct {
	Count    uint64        // entries found
	Method   string        // "walk", "batch" or "kfunc" (dataplane.MethodWalk/MethodBatch/MethodKfunc)
	Restarts uint32        // walk restarts
	Steps    uint64        // kernel calls made: next-key calls of a walk, lookup calls of a batch
	Passes   uint32        // walk passes begun from the first key: 1, plus restarts that could not resume
	Workers  uint32        // batch: goroutines that split the bucket range (1: one sequential pass)
	Complete bool          // false if stopped by the cap or ctx (Count is then a lower bound)
	Cost     time.Duration // time spent counting this map (for kfunc: the share of the one read)
	// Err is set by Counter.Count when this map could not be counted:
	// errors.Is(Err, ErrNotCountable) for map types that keep no fill
	// level; Count is then meaningless.
	Err error
}

// WalkOptions tune Walk. A nil *WalkOptions means the defaults.
type WalkOptions struct {
	// MaxSteps caps the number of BPF_MAP_GET_NEXT_KEY calls of one walk.
	// 0 means 4 x the map's max entries (as Cilium's
	// DumpReliablyWithCallback): a static map needs max entries + 1 calls,
	// so the cap leaves room for three full replays.
	MaxSteps uint64
	// Naive counts every key the kernel returns, without restart
	// detection, as a plain next-key loop does. It exists to measure what
	// detection buys and costs (see the package doc); under churn the
	// count can then far exceed the number of entries.
	Naive bool

	// afterKey, for tests, runs after each key the walk advances to, with
	// the new cursor and the key before it (nil at the start of a pass).
	afterKey func(cur, prev []byte)
}

// BatchOptions tune Batch. A nil *BatchOptions means the defaults.
type BatchOptions struct {
	// ChunkSize is the number of entries fetched per BPF_MAP_LOOKUP_BATCH
	// call; 0 means 4096.
	ChunkSize int
	// Workers splits the map's bucket range among this many goroutines,
	// each with its own cursor (see Batch); 0 means GOMAXPROCS, at most 4;
	// 1 is one sequential pass. The CPU time of a count is about the same
	// either way; more workers return it sooner.
	Workers int
}

// Options tune a Counter. A nil *Options means the defaults.
type Options struct {
	// Method forces one method for every map; "" or Auto picks per map
	// and kernel. A forced method that a map type or the kernel lacks is
	// an error (NewCounter for kfunc, Result.Err for batch), never a
	// silent fallback.
	Method Method
	Walk   *WalkOptions
	Batch  *BatchOptions
}

const (
	defaultChunk = 4096
	// ctxEvery is how many keys a walk visits between context checks: a
	// few milliseconds of syscalls, so cancellation is prompt and the check
	// costs nothing measurable.
	ctxEvery = 4096
)

// countable reports whether a map type keeps a meaningful fill level.
func countable(t ebpf.MapType) bool {
	switch t {
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.HashOfMaps, ebpf.LPMTrie:
		return true
	}
	return false
}

// kfuncCountable reports whether the kernel keeps an element count for the
// map type, which bpf_map_sum_elem_count reads. Arrays and LPM tries keep
// none (the kfunc returns 0 for them).
func kfuncCountable(t ebpf.MapType) bool {
	switch t {
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash:
		return true
	}
	return false
}
