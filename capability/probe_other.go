//go:build !linux

package capability

import (
	"context"
	"fmt"
)

// ProbeOptions selects what ProbeHost looks at. Nil means host probes only.
type ProbeOptions struct {
	NetNS      string
	Interfaces []string
}

// ProbeHost reports every probe as not supported: XDP and AF_XDP are Linux
// features.
func ProbeHost(ctx context.Context, opts *ProbeOptions) (*Host, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := &Host{Probes: map[ProbeName]Result{}}
	for name := range MinKernel {
		h.Probes[name] = ResultOf(name, fmt.Errorf("%s needs Linux: %w", name, ErrNotSupported))
	}
	return h, nil
}

// ExplainPermission returns err unchanged: capabilities are a Linux notion.
func ExplainPermission(err error) error { return err }
