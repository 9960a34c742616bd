package ebpfbackend

import (
	"context"
	"strings"
	"testing"
)

// A failed read of the counters becomes the fw_counters row in error; the
// rest of the report (every map's fill, the sessions) still stands.
func TestIntegrationCountersReadFailureIsARowError(t *testing.T) {
	_, b := newNetlab(t, nil)
	ctx := context.Background()
	if _, err := b.ResourceStats(ctx); err != nil {
		t.Fatal(err)
	}
	// Break the counters read for real: the map's descriptor goes away
	// (the program keeps the map alive in the kernel). Close tolerates it.
	b.mu.Lock()
	err := b.objs.FwCounters.Close()
	b.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.ResourceStats(ctx)
	if err != nil {
		t.Fatalf("ResourceStats with unreadable counters = %v, want a report with the row in error", err)
	}
	row, ok := rep.Find("fw_counters", "global")
	if !ok || !strings.Contains(row.Error, "read counters") {
		t.Errorf("fw_counters row = %+v, want an error saying the counters could not be read", row)
	}
	if v, ok := rep.Counter("forwarded", "global"); ok {
		t.Errorf("forwarded = %d reported although the counters were not read", v)
	}
	sess, ok := rep.Find("fw_sessions_v4", "global")
	if !ok || sess.Used == nil || sess.Error != "" || rep.Sessions == nil {
		t.Errorf("fw_sessions_v4 = %+v, sessions %v: the rest of the report must stand", sess, rep.Sessions)
	}
}
