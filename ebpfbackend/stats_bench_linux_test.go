package ebpfbackend

import (
	"context"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/mapcount"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// BenchmarkResourceStats1M reads the whole backend's ResourceStats with a
// 1 Mi-entry IPv4 session map full (every entry used), once per counting
// method. Target (issue 3, and issue 15 with the table full): <= 1 ms per
// report when the kfunc is available.
func BenchmarkResourceStats1M(b *testing.B) {
	testutil.Privileged(b, testutil.NeedBPF, testutil.NeedNetNS)
	const capacity = 1 << 20
	const fill = capacity
	l := netlab.NewT(b, nil)
	// netlabConfig forces XDP, which the gate takes once the firewall's
	// ends advertise ndo-xmit.
	if err := l.ArmRedirectTargets(); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	cfg := netlabConfig(l)
	cfg.Tables.Sessions = capacity

	for _, method := range []mapcount.Method{mapcount.MethodKfunc, mapcount.MethodBatch} {
		b.Run(string(method), func(b *testing.B) {
			be, err := New(ctx, &Options{NetNS: l.Firewall.Path, CountMethod: method, SessionSweepInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			if _, err := be.Apply(ctx, cfg); err != nil {
				b.Fatal(err)
			}
			used := fillSessions(b, be.objs.FwSessionsV4, fill)
			b.ResetTimer()
			var rep dataplane.ResourceReport
			for b.Loop() {
				rep, err = be.ResourceStats(ctx)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			row, ok := rep.Find("fw_sessions_v4", "global")
			if !ok || row.Used == nil || *row.Used != used || row.Method != string(method) {
				b.Fatalf("sessions row %+v, want used %d counted by %s", row, used, method)
			}
			b.ReportMetric(float64(used), "sessions")
			b.ReportMetric(float64(len(rep.Resources)), "rows")
		})
	}
}

// fillSessions writes n distinct IPv4 sessions with batch updates and
// returns how many the map holds (all n: the session maps are plain
// hashes).
func fillSessions(b *testing.B, m *ebpf.Map, n int) uint64 {
	b.Helper()
	const chunk = 65536
	keys := make([]fwFwSess4Key, chunk)
	vals := make([]fwFwSessVal, chunk)
	for done := 0; done < n; done += chunk {
		k := min(chunk, n-done)
		for i := range k {
			id := uint32(done + i)
			keys[i] = fwFwSess4Key{LoAddr: 0x0a000000 | id, HiAddr: 0xc0a80001, LoPort: 1000, HiPort: 80, Proto: 6}
		}
		if _, err := m.BatchUpdate(keys[:k], vals[:k], nil); err != nil {
			b.Fatalf("batch update: %v", err)
		}
	}
	var count uint64
	var key fwFwSess4Key
	var val fwFwSessVal
	it := m.Iterate()
	for it.Next(&key, &val) {
		count++
	}
	if err := it.Err(); err != nil {
		b.Fatal(err)
	}
	if count != uint64(n) {
		b.Fatalf("map holds %d sessions after writing %d", count, n)
	}
	return count
}
