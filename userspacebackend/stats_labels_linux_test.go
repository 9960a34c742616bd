package userspacebackend

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

// TestIntegrationRowIdentityStableAsFillChanges: a row's identity (name,
// scope) is what metrics use as labels, so it must not change when the
// tables fill; values that move (the fullest shard, the skew) are figures.
// Before, the fullest-shard row's scope carried the skew ("shard/02 (max
// skew 32.00)") and every new flow could make a new series.
func TestIntegrationRowIdentityStableAsFillChanges(t *testing.T) {
	e := newLabEnv(t, 0)
	b := newBackend(t, e, nil, netlabConfig(e.l))
	ids := func(r dataplane.ResourceReport) []string {
		var out []string
		for _, res := range r.Resources {
			out = append(out, res.Name+"|"+res.Scope)
		}
		slices.Sort(out)
		return out
	}
	// One round trip first: each binding makes its flow cache (a row of
	// its own) when its first frame arrives. From then on only values move.
	if err := udpRT(e.l, 19999, e.l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	before := report(t, b)
	for p := range 40 {
		if err := udpRT(e.l, uint16(20000+p), e.l.ServerAddr4, portUDP, 3*time.Second); err != nil {
			t.Fatalf("flow %d: %v", p, err)
		}
	}
	after := report(t, b)
	if after.Sessions == nil || after.Sessions.Total < 40 {
		t.Fatalf("sessions %+v after 40 flows", after.Sessions)
	}
	if diff := cmp.Diff(ids(before), ids(after)); diff != "" {
		t.Errorf("row identities changed with the fill (-before +after):\n%s", diff)
	}
	row, ok := after.Find("sessions_fullest_shard", "global")
	if !ok {
		t.Fatal("no sessions_fullest_shard row in scope global")
	}
	figs := map[string]float64{}
	for _, f := range row.Figures {
		figs[f.Name] = f.Value
	}
	if _, ok := figs["shard"]; !ok || figs["max_skew"] < 1 {
		t.Errorf("fullest shard figures %v, want shard and max_skew >= 1", row.Figures)
	}
	if len(after.Interfaces) != 2 {
		t.Errorf("interfaces %+v, want the two managed ones with their attach mode", after.Interfaces)
	}
	for _, is := range after.Interfaces {
		if is.Attach != dataplane.AttachedXDP || is.Reason == "" {
			t.Errorf("interface %+v: want native XDP (veth) through the AF_XDP shim", is)
		}
	}
}
