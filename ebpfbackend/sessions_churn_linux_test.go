package ebpfbackend

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSessionsListingUnderChurn: while another goroutine keeps deleting and
// re-inserting half of the IPv4 sessions, every listing succeeds, lists no
// session twice, and lists every session of the other half (never touched):
// the batch walk's cursor is a bucket, so churn neither restarts it nor
// makes it skip entries that stay (a next-key walk restarts from the first
// key when its key is deleted under it).
func TestSessionsListingUnderChurn(t *testing.T) {
	const stable, churning = 15000, 15000
	_, b := newNetlab(t, nil)
	ctx := context.Background()
	now, err := monotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	key := func(i int) fwFwSess4Key {
		return fwFwSess4Key{LoAddr: 0x0a000000 | uint32(i), HiAddr: 0xc0a80001, LoPort: 1000, HiPort: 80, Proto: 17}
	}
	val := fwFwSessVal{CreatedNs: now, LastSeenNs: now, InitiatorIsLo: 1}
	m := b.objs.FwSessionsV4
	keys := make([]fwFwSess4Key, stable+churning)
	vals := make([]fwFwSessVal, len(keys))
	for i := range keys {
		keys[i], vals[i] = key(i), val
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var changes atomic.Uint64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for round := 0; !stop.Load(); round++ {
			for i := stable; i < stable+churning && !stop.Load(); i++ {
				k := key(i)
				if (i+round)%2 == 0 {
					if m.Delete(k) == nil {
						changes.Add(1)
					}
				} else if m.Put(k, val) == nil {
					changes.Add(1)
				}
			}
		}
	}()
	defer func() {
		stop.Store(true)
		wg.Wait()
	}()

	deadline := time.Now().Add(2 * time.Second)
	listings := 0
	for time.Now().Before(deadline) || listings < 5 {
		before := changes.Load()
		got, _, err := b.Sessions(ctx, 1<<20)
		if err != nil {
			t.Fatalf("listing %d under churn: %v", listings, err)
		}
		seen := make(map[string]bool, len(got))
		for _, s := range got {
			id := s.Source + ">" + s.Destination
			if seen[id] {
				t.Fatalf("listing %d: %s listed twice", listings, id)
			}
			seen[id] = true
		}
		for i := range stable {
			k := key(i)
			id := fmt.Sprintf("%s>%s", addrPort4(k.LoAddr, k.LoPort), addrPort4(k.HiAddr, k.HiPort))
			if !seen[id] {
				t.Fatalf("listing %d (of %d sessions) lacks the untouched session %s", listings, len(got), id)
			}
		}
		if changes.Load() == before {
			t.Fatalf("listing %d saw no churn: the test does not test what it says", listings)
		}
		listings++
	}
	t.Logf("%d listings, %d inserts and deletes meanwhile", listings, changes.Load())
}
