package xsk

import (
	"runtime"
	"sync/atomic"
)

// Frame states. Every UMEM frame is in exactly one; the ledger counts them.
const (
	stFree   uint8 = iota // on the free stack
	stKernRX              // given to the kernel for RX: fill ring, being written, or RX ring
	stApp                 // owned by the caller (received, or allocated for TX)
	stKernTX              // given to the kernel for TX: TX ring, or awaiting completion
)

// ledger counts frames per state. Only the worker goroutine writes it;
// Stats reads it from anywhere. A sequence counter (odd while a batch
// transition is being written) lets a reader take a consistent snapshot
// without a lock the worker would wait on: the worker never blocks, a
// reader retries while a batch is in flight.
type ledger struct {
	seq    atomic.Uint32
	counts [4]atomic.Uint32
}

// move transfers n frames between states; the sum is unchanged.
func (l *ledger) move(from, to uint8, n uint32) {
	if n == 0 {
		return
	}
	l.seq.Add(1)
	l.counts[from].Add(^(n - 1))
	l.counts[to].Add(n)
	l.seq.Add(1)
}

func (l *ledger) snapshot() (c [4]uint32) {
	for spins := 0; ; spins++ {
		s := l.seq.Load()
		if s&1 == 0 {
			for i := range c {
				c[i] = l.counts[i].Load()
			}
			if l.seq.Load() == s {
				return c
			}
		}
		if spins > 16 {
			runtime.Gosched()
		}
	}
}
