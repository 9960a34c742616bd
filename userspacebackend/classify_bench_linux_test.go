package userspacebackend

import (
	"testing"
)

// BenchmarkClassifyPlain: the per-packet work of the datapath for one
// established, untranslated UDP flow (parse, flow cache, session touch,
// TTL and checksum work), with no I/O: one frame classified over and over
// by a worker of a running backend (the frame is restored each time, as
// classify rewrites it). scripts/bench-nat.sh also builds this file into
// the commit before NAT, to compare the untranslated path before and
// after.
func BenchmarkClassifyPlain(b *testing.B) {
	e := newLabEnv(b, sinkPort)
	l := e.l
	be := newBackend(b, e, nil, sinkConfig(l))
	snap := be.snap.Load()
	in := snap.port(l.FwClientIndex)
	w := newWorker(in.txq[0])
	frame := floodFrame(l, 40000)
	buf := make([]byte, len(frame))
	var now int64
	for i := 0; b.Loop(); i++ {
		// The clock once per 64 frames, as a worker reads it once per batch.
		if i&63 == 0 {
			now = be.now()
		}
		copy(buf, frame)
		if _, ok := w.classify(snap, be.epoch.Load(), in, buf, now); !ok {
			b.Fatal("the frame was not forwarded")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/packet")
}
