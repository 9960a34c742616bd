package session

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
)

func filled(b *testing.B, sessions uint32) (*Table, []Tuple) {
	b.Helper()
	tb := New(sessions+sessions/8, dataplane.DefaultSessionShards, dataplane.Timeouts{})
	tuples := make([]Tuple, 0, sessions)
	for i := uint32(0); uint32(len(tuples)) < sessions; i++ {
		tp := genTuple(i, i%4 == 0)
		tp.DstPort = uint16(i >> 16)
		if _, _, err := tb.Insert(tp, 0, 0); err == nil {
			tuples = append(tuples, tp)
		}
	}
	// Look up in an order unrelated to insertion, as a datapath would.
	for i := range tuples {
		j := int(uint64(i) * 0x9e3779b97f4a7c15 % uint64(len(tuples)))
		tuples[i], tuples[j] = tuples[j], tuples[i]
	}
	return tb, tuples
}

// BenchmarkLookupHit measures the hit path (the common datapath case) on
// tables of different sizes; with 1 M sessions (88 MB) most lookups miss
// the CPU caches twice (index word, slot).
func BenchmarkLookupHit(b *testing.B) {
	for _, n := range []uint32{4096, 65536, 1 << 20} {
		tb, tuples := filled(b, n)
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, _, ok := tb.Lookup(tuples[i], 1, 64); !ok {
					b.Fatal("miss")
				}
				i++
				if i == len(tuples) {
					i = 0
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mlookups/s")
		})
		// parallel: each goroutine owns a disjoint slice of the flows, as
		// RSS steers a flow to one queue and so one worker.
		// parallel_shared: every goroutine walks all flows, so the slots'
		// cache lines bounce between cores (the worst case).
		for _, shared := range []bool{false, true} {
			name := fmt.Sprintf("sessions=%d/parallel", n)
			if shared {
				name += "_shared"
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				var worker atomic.Uint64
				par := runtime.GOMAXPROCS(0)
				b.RunParallel(func(pb *testing.PB) {
					w := int(worker.Add(1) - 1)
					mine, i := tuples, w*7919%len(tuples)
					if !shared {
						chunk := len(tuples) / par
						mine, i = tuples[(w%par)*chunk:(w%par+1)*chunk], 0
					}
					for pb.Next() {
						if _, _, ok := tb.Lookup(mine[i], 1, 64); !ok {
							b.Error("miss")
							return
						}
						i++
						if i == len(mine) {
							i = 0
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mlookups/s")
			})
		}
	}
}

// BenchmarkInsertRemove is the steady-state churn of a 75 % full table: one
// new flow in, one old flow out per op.
func BenchmarkInsertRemove(b *testing.B) {
	const n = 65536
	tb := New(n, dataplane.DefaultSessionShards, dataplane.Timeouts{})
	ring := make([]Tuple, n*3/4)
	for i := range ring {
		ring[i] = genTuple(uint32(i), i%4 == 0)
		if _, _, err := tb.Insert(ring[i], 0, 0); err != nil {
			b.Fatal(err)
		}
	}
	next := uint32(len(ring))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tb.Remove(ring[i])
		ring[i] = genTuple(next, next%4 == 0)
		next++
		if _, _, err := tb.Insert(ring[i], 0, 0); err != nil {
			b.Fatal(err)
		}
		i++
		if i == len(ring) {
			i = 0
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Minserts/s")
}

// BenchmarkMemory reports the heap per session of a full 1 M table.
func BenchmarkMemory(b *testing.B) {
	for b.Loop() {
		per, n, fill := measureMemory(1<<20, dataplane.DefaultSessionShards)
		b.ReportMetric(per, "bytes/session")
		b.ReportMetric(float64(n), "sessions")
		b.ReportMetric(fill, "fill%_at_first_refusal")
	}
}

// packets makes a packet of every tuple, of any zone, 64 bytes.
func packets(tuples []Tuple) []Packet {
	ps := make([]Packet, len(tuples))
	for i, tp := range tuples {
		ps[i] = Packet{Tuple: tp, Zone: AnyZone, Size: 64}
	}
	return ps
}

// BenchmarkLookupBatch is the hit path through TrackBatch, 64 packets per
// call, reported per lookup.
func BenchmarkLookupBatch(b *testing.B) {
	for _, n := range []uint32{4096, 65536, 1 << 20} {
		tb, tuples := filled(b, n)
		pkts := packets(tuples)
		b.Run(fmt.Sprintf("sessions=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			var batch Batch
			i := 0
			for b.Loop() {
				if i+BatchSize > len(tuples) {
					i = 0
				}
				if h := tb.TrackBatch(&batch, pkts[i:i+BatchSize], 1); h != BatchSize {
					b.Fatalf("%d hits of %d", h, BatchSize)
				}
				i += BatchSize
			}
			b.ReportMetric(float64(b.N)*BatchSize/b.Elapsed().Seconds()/1e6, "Mlookups/s")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*BatchSize), "ns/lookup")
		})
		b.Run(fmt.Sprintf("sessions=%d/parallel", n), func(b *testing.B) {
			b.ReportAllocs()
			var worker atomic.Uint64
			par := runtime.GOMAXPROCS(0)
			b.RunParallel(func(pb *testing.PB) {
				w := int(worker.Add(1)-1) % par
				chunk := len(tuples) / par
				mine := pkts[w*chunk : (w+1)*chunk]
				var batch Batch
				i := 0
				for pb.Next() {
					if i+BatchSize > len(mine) {
						i = 0
					}
					if h := tb.TrackBatch(&batch, mine[i:i+BatchSize], 1); h != BatchSize {
						b.Errorf("%d hits", h)
						return
					}
					i += BatchSize
				}
			})
			b.ReportMetric(float64(b.N)*BatchSize/b.Elapsed().Seconds()/1e6, "Mlookups/s")
		})
	}
}
