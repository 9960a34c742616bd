package fwplane

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fwplane/fwplane/dataplane"
)

// TestOpenRefusesOverBudgetBeforeAllocating: tables.sessions at the
// validator's maximum (67108864) costs more than half of a 24 GiB host on
// both backends (the eBPF cost computed from the compiled collection
// spec); Open refuses in well under a second with the figures, and no
// backend is ever built.
func TestOpenRefusesOverBudgetBeforeAllocating(t *testing.T) {
	cfg := smallConfig()
	cfg.Tables.Sessions = dataplane.MaxTableEntries
	opts := &Options{Host: everythingHost()}
	var built []*fakeDP
	bs := fakeBackends(opts, nil, &built)
	start := time.Now()
	_, res, err := open(context.Background(), cfg, opts, bs)
	took := time.Since(start)
	if !errors.Is(err, dataplane.ErrNotSupported) || len(built) != 0 {
		t.Fatalf("Open = %v after building %d; want a refusal before building anything", err, len(built))
	}
	if took > 500*time.Millisecond {
		t.Errorf("refusal took %v", took)
	}
	msg := err.Error()
	for _, want := range []string{
		"ebpf: memory: the config needs",
		"over the budget of 12.0 GiB (50 % of the host's 24.0 GiB); largest part fw_sessions_v6",
		"userspace: tables.sessions: 67108864 entries, the userspace backend supports at most 16777216",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	t.Logf("refused in %v:\n%s", took, res.Explain())

	// A budget that fits admits it (and then the backend is built).
	opts.MemoryBudget = 64 << 30
	if _, res, err := open(context.Background(), cfg, opts, fakeBackends(opts, nil, &built)); err != nil || res.Mode != dataplane.ModeEBPF {
		t.Errorf("64 GiB budget: %q, %v; want ebpf", res.Mode, err)
	}
}
