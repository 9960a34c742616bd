package userspacebackend

import (
	"context"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
)

// TestIntegrationResourceStatsInto: a report written into a reused
// ResourceReport that held other, longer contents has exactly the rows and
// counters of a fresh ResourceStats (nothing stale left), reuses the
// caller's arrays, and a failed read (closed backend) leaves it as it was.
func TestIntegrationResourceStatsInto(t *testing.T) {
	e := newLabEnv(t, 0)
	b := newBackend(t, e, nil, netlabConfig(e.l))
	if err := udpRT(e.l, 0, e.l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatalf("udp round trip: %v", err)
	}
	stale := dataplane.Resource{Name: "stale", Scope: "stale", Used: dataplane.Uint64(7), Breakdown: []dataplane.Part{{Name: "stale"}}}
	rep := dataplane.ResourceReport{
		Resources: make([]dataplane.Resource, 400),
		Counters:  make([]dataplane.Counter, 400),
		Sessions:  &dataplane.SessionCounts{Total: 12345},
	}
	for i := range rep.Resources {
		rep.Resources[i] = stale
		rep.Counters[i] = dataplane.Counter{Name: "stale", Value: 7}
	}
	resArr, cntArr, sess := &rep.Resources[0], &rep.Counters[0], rep.Sessions

	// The worker publishes its counts after the batch it transmitted:
	// wait until the round trip's two frames are counted, so both reads
	// below see an idle lab.
	deadline := time.Now().Add(3 * time.Second)
	for {
		if n, _ := report(t, b).Counter("forwarded", "global"); n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the round trip's frames were never counted as forwarded")
		}
		time.Sleep(time.Millisecond)
	}
	ctx := context.Background()
	if err := b.ResourceStatsInto(ctx, &rep); err != nil {
		t.Fatal(err)
	}
	fresh := report(t, b)
	if &rep.Resources[0] != resArr || &rep.Counters[0] != cntArr || rep.Sessions != sess {
		t.Error("the report's arrays were not reused")
	}
	if rep.Mode != dataplane.ModeUserspace || rep.Generation != fresh.Generation || rep.Took <= 0 {
		t.Errorf("header: mode %q generation %d took %v; fresh: generation %d", rep.Mode, rep.Generation, rep.Took, fresh.Generation)
	}
	if len(rep.Resources) != len(fresh.Resources) || len(rep.Counters) != len(fresh.Counters) {
		t.Fatalf("reused: %d rows, %d counters; fresh: %d rows, %d counters",
			len(rep.Resources), len(rep.Counters), len(fresh.Resources), len(fresh.Counters))
	}
	for i, r := range rep.Resources {
		f := fresh.Resources[i]
		if r.Name != f.Name || r.Scope != f.Scope || r.Kind != f.Kind || r.Detail != f.Detail ||
			r.Capacity != f.Capacity || r.Method != f.Method || (r.Used == nil) != (f.Used == nil) || len(r.Breakdown) != len(f.Breakdown) {
			t.Errorf("row %d: reused %+v, fresh %+v", i, r, f)
			continue
		}
		for j := range r.Breakdown {
			if r.Breakdown[j].Name != f.Breakdown[j].Name {
				t.Errorf("row %d breakdown %d: reused %q, fresh %q", i, j, r.Breakdown[j].Name, f.Breakdown[j].Name)
			}
		}
	}
	for i, c := range rep.Counters {
		if f := fresh.Counters[i]; c.Name != f.Name || c.Scope != f.Scope || c.Detail != f.Detail {
			t.Errorf("counter %d: reused %+v, fresh %+v", i, c, f)
		}
	}
	for _, name := range []string{"forwarded", "sessions_created_ipv4"} {
		got, _ := rep.Counter(name, "global")
		want, _ := fresh.Counter(name, "global")
		if got != want || got == 0 {
			t.Errorf("%s: reused %d, fresh %d (want equal and non-zero on an idle lab)", name, got, want)
		}
	}
	if rep.Sessions == nil || *rep.Sessions != *fresh.Sessions {
		t.Errorf("sessions: reused %+v, fresh %+v", rep.Sessions, fresh.Sessions)
	}

	// Through the dataplane helper, the same in-place path.
	viaHelper := dataplane.ResourceReport{Resources: make([]dataplane.Resource, 0, 400)}
	helperArr := &viaHelper.Resources[:1][0]
	if err := dataplane.ReadResourceStats(ctx, b, &viaHelper); err != nil || len(viaHelper.Resources) != len(fresh.Resources) || &viaHelper.Resources[0] != helperArr {
		t.Errorf("ReadResourceStats: %d rows (in place: %v), %v", len(viaHelper.Resources), &viaHelper.Resources[0] == helperArr, err)
	}

	before := rep.Resources[0]
	n := len(rep.Resources)
	b.Close()
	if err := b.ResourceStatsInto(ctx, &rep); err != dataplane.ErrClosed {
		t.Errorf("ResourceStatsInto after Close: %v, want ErrClosed", err)
	}
	if len(rep.Resources) != n || rep.Resources[0].Name != before.Name || rep.Resources[0].Used != before.Used {
		t.Error("a failed read changed the report")
	}
}
