package mapcount

import (
	"hash/maphash"
	"sync"
)

// Restart detection. A pass of a next-key walk returns each key at most
// once, so a key returned twice in a pass means the kernel lost the cursor
// and started over from the first bucket. Remembering every key costs 16
// bytes a key and a cache miss per key (a 16 MiB table for a 1M-entry map
// made the walk 25-40 % slower), so the detector remembers two subsets:
//
//   - the first headKeys keys of the pass: a restart returns the first key
//     of the map, which is almost always one of them, so detection is
//     immediate; the table is small enough to stay in cache;
//   - one key in sampleEvery (by fingerprint) of the whole pass: if churn
//     replaced the whole head, a restart is still seen within about
//     sampleEvery steps of meeting surviving keys.
//
// Maps with fewer than headKeys entries are thus remembered completely.
// Fingerprints are 64-bit maphash values with a fresh seed per walk: a
// false "seen" (probability about n/2^64 per key) would only cost a new pass.
const (
	headKeys    = 4096
	sampleEvery = 16
)

type detector struct {
	head, sample keySet
	seed         maphash.Seed
}

var detectors = sync.Pool{New: func() any {
	d := &detector{}
	d.head.slots = make([]uint64, 2*headKeys)
	d.sample.slots = make([]uint64, 1<<10)
	return d
}}

func getDetector() *detector {
	d := detectors.Get().(*detector)
	d.reset()
	d.seed = maphash.MakeSeed()
	return d
}

func putDetector(d *detector) {
	if len(d.sample.slots) > 1<<18 {
		// Don't keep more than 2 MiB alive for the next, maybe small, map.
		d.sample.slots = make([]uint64, 1<<10)
		d.sample.n = 0
	}
	detectors.Put(d)
}

// reset starts a new pass.
func (d *detector) reset() {
	d.head.reset()
	d.sample.reset()
}

// seen reports whether key was met before in this pass, as far as the
// subsets tell, and remembers it if it belongs to one.
func (d *detector) seen(key []byte) bool {
	h := maphash.Bytes(d.seed, key)
	if h == 0 {
		h = 1 // 0 marks an empty slot
	}
	if d.head.contains(h) {
		return true
	}
	if h%sampleEvery == 0 && !d.sample.add(h) {
		return true
	}
	if d.head.n < headKeys {
		d.head.add(h)
	}
	return false
}

// keySet is an open-addressing set of non-zero 64-bit fingerprints, at most
// 3/4 full, with a power-of-two table.
type keySet struct {
	slots []uint64
	n     int
}

func (s *keySet) contains(h uint64) bool {
	mask := uint64(len(s.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch s.slots[i] {
		case 0:
			return false
		case h:
			return true
		}
	}
}

// add adds h and reports whether it was new.
func (s *keySet) add(h uint64) bool {
	if (s.n+1)*4 > len(s.slots)*3 {
		s.grow()
	}
	if !s.insert(h) {
		return false
	}
	s.n++
	return true
}

func (s *keySet) insert(h uint64) bool {
	mask := uint64(len(s.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch s.slots[i] {
		case 0:
			s.slots[i] = h
			return true
		case h:
			return false
		}
	}
}

func (s *keySet) grow() {
	old := s.slots
	s.slots = make([]uint64, 2*len(old))
	for _, h := range old {
		if h != 0 {
			s.insert(h)
		}
	}
}

func (s *keySet) reset() {
	if s.n > 0 {
		clear(s.slots)
		s.n = 0
	}
}
