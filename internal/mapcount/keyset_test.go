package mapcount

import (
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDetector checks the restart detector without a kernel: within a pass
// every first key is new; a repeat of a head key or of a sampled key is
// seen; after reset nothing is.
func TestDetector(t *testing.T) {
	key := func(i uint64) []byte {
		b := make([]byte, 16)
		binary.LittleEndian.PutUint64(b, i)
		return b
	}
	tests := []struct {
		name string
		keys uint64
	}{
		{"empty", 0},
		{"small", 100},
		{"exactly_head", headKeys},
		{"beyond_head", 200_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := getDetector()
			defer putDetector(d)
			var firstSeen, repeatsMissed, headMissed uint64
			for i := uint64(0); i < tt.keys; i++ {
				if d.seen(key(i)) {
					firstSeen++
				}
			}
			for i := uint64(0); i < tt.keys; i++ {
				if !d.seen(key(i)) {
					repeatsMissed++
					if i < headKeys {
						headMissed++
					}
				}
			}
			type result struct{ FirstSeen, HeadMissed uint64 }
			if diff := cmp.Diff(result{0, 0}, result{firstSeen, headMissed}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			// Beyond the head only about one key in sampleEvery is kept.
			if tail := tt.keys - min(tt.keys, headKeys); tail > 0 {
				caught := tail - repeatsMissed
				if lo, hi := tail/sampleEvery/2, tail/sampleEvery*2; caught < lo || caught > hi {
					t.Errorf("caught %d of %d repeats beyond the head, want about 1 in %d", caught, tail, sampleEvery)
				}
			}
			d.reset()
			for i := uint64(0); i < tt.keys; i++ {
				if d.seen(key(i)) {
					t.Fatalf("key %d seen right after reset", i)
				}
			}
		})
	}
}
