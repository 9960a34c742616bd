//go:build linux

package xsk

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

func TestResolveOptions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    *Options
		want    resolved
		wantErr bool
	}{
		{"nil is the dataplane default", nil, resolved{fill: 2048, rx: 2048, tx: 2048, comp: 2048, frames: 4096,
			frameSize: 2048, bindTimeout: DefaultBindTimeout, needWakeup: true}, false},
		{"frames follow fill + tx", &Options{RingSize: 256, TXRingSize: 64}, resolved{fill: 256, rx: 256, tx: 64, comp: 256,
			frames: 320, frameSize: 2048, bindTimeout: DefaultBindTimeout, needWakeup: true}, false},
		{"from config", OptionsFrom(dataplane.UserspaceOpts{FramesPerBinding: 1000, RingSize: 128}), resolved{fill: 128, rx: 128,
			tx: 128, comp: 128, frames: 1000, frameSize: 2048, bindTimeout: DefaultBindTimeout, needWakeup: true}, false},
		{"ring not a power of two", &Options{RingSize: 100}, resolved{}, true},
		{"ring too big", &Options{FillRingSize: 1 << 17}, resolved{}, true},
		{"frame size", &Options{FrameSize: 3000}, resolved{}, true},
		{"too many frames", &Options{Frames: dataplane.MaxUMEMFrames + 1}, resolved{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolve(tc.opts)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidOptions) {
					t.Fatalf("err = %v, want ErrInvalidOptions", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got, cmp.AllowUnexported(resolved{})); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

// TestLedgerSnapshotsAddUp moves frames between states as fast as one
// writer can while readers snapshot: every snapshot must add up.
func TestLedgerSnapshotsAddUp(t *testing.T) {
	const total = 4096
	var l ledger
	l.counts[stFree].Store(total)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad, snaps atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				c := l.snapshot()
				if c[0]+c[1]+c[2]+c[3] != total {
					bad.Add(1)
				}
				snaps.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(200 * time.Millisecond)
	for i := uint32(0); time.Now().Before(deadline); i++ {
		n := i%64 + 1
		l.move(stFree, stKernRX, n)
		l.move(stKernRX, stApp, n)
		l.move(stApp, stKernTX, n)
		l.move(stKernTX, stFree, n)
	}
	stop.Store(true)
	wg.Wait()
	if bad.Load() != 0 || snaps.Load() == 0 {
		t.Errorf("%d of %d snapshots did not add up to %d", bad.Load(), snaps.Load(), total)
	}
}

func TestFrameStatsSum(t *testing.T) {
	f := FrameStats{Total: 21, Free: 1, FillRing: 2, RXRing: 3, App: 4, TXRing: 5, Completion: 6}
	if f.Sum() != f.Total {
		t.Errorf("Sum = %d, want %d", f.Sum(), f.Total)
	}
}
