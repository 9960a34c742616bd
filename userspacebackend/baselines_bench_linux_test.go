package userspacebackend

import (
	"context"
	"testing"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// BenchmarkBaselines is this backend's column of the baseline tables
// (scripts/bench-baselines.sh, scripts/bench-sessions.sh): netlab.BenchConfig
// with the backend's defaults.
func BenchmarkBaselines(b *testing.B) {
	testutil.Command(b, "iperf3", "iperf3")
	netlab.BenchBaselines(b, netlab.BenchDataplane{Name: "userspace", Start: func(ctx context.Context, l *netlab.Lab) (*netlab.BenchInstance, error) {
		be, err := New(ctx, &Options{NetNS: l.Firewall.Path})
		if err != nil {
			return nil, err
		}
		if _, err := be.Apply(ctx, netlab.BenchConfig(l, "")); err != nil {
			be.Close()
			return nil, err
		}
		// Its unassured count is live (one atomic per shard).
		return netlab.BenchBackend(be, true), nil
	}})
}
