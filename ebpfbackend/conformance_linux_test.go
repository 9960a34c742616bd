package ebpfbackend

import (
	"context"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/dptest"
)

// TestConformance runs the shared conformance suite (internal/dptest) on
// this backend: the same traffic, verdicts, counters and reports as every
// other backend.
func TestConformance(t *testing.T) {
	dptest.Run(t, dataplane.ModeEBPF, func(ctx context.Context, netns string) (dataplane.DataPlane, error) {
		return New(ctx, &Options{NetNS: netns})
	}, Supported()...)
}
