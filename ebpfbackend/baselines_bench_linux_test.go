package ebpfbackend

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/testutil"
)

// benchColumn is this backend as a column of netlab.BenchBaselines,
// attached in mode attach on both firewall interfaces (netlab.BenchConfig).
// A refusal of that mode on a veth setting (XDP where the peer sends
// partial checksums) skips the column there, with the backend's reason;
// an interface attached otherwise than asked fails it.
func benchColumn(name string, attach dataplane.AttachMode, want string) netlab.BenchDataplane {
	return netlab.BenchDataplane{Name: name, PeerXDP: attach == dataplane.AttachXDP, Start: func(ctx context.Context, l *netlab.Lab) (*netlab.BenchInstance, error) {
		if attach == dataplane.AttachXDP {
			// Where the peers' GRO is on, the firewall's ends can take
			// redirected frames once armed; on kernel defaults the gate
			// refuses XDP and the column is skipped with its reason.
			if err := l.ArmRedirectTargets(); err != nil {
				return nil, err
			}
		}
		be, err := New(ctx, &Options{NetNS: l.Firewall.Path})
		if err != nil {
			return nil, err
		}
		if _, err := be.Apply(ctx, netlab.BenchConfig(l, attach)); err != nil {
			be.Close()
			if errors.Is(err, dataplane.ErrNotSupported) {
				return nil, fmt.Errorf("%w: %w", netlab.ErrNotApplicable, err)
			}
			return nil, err
		}
		rep, err := be.ResourceStats(ctx)
		if err != nil {
			be.Close()
			return nil, err
		}
		for _, it := range rep.Interfaces {
			if it.Attach != want {
				be.Close()
				return nil, fmt.Errorf("%s attached as %s (%s), want %s", it.Name, it.Attach, it.Reason, want)
			}
		}
		// The sweep's unassured count is as of its last run: the
		// many-flow rows count on lossless passes instead.
		inst := netlab.BenchBackend(be, false)
		prog := be.objs.XdpFw
		if attach == dataplane.AttachTC {
			prog = be.objs.TcFw
		}
		inst.ProgramNs = func(during func()) (float64, error) { return programNs(prog, during) }
		return inst, nil
	}}
}

// programNs is prog's average run time per packet while during runs,
// from the kernel's BPF run-time statistics (enabled only meanwhile: they
// cost two clock reads per run).
func programNs(prog *ebpf.Program, during func()) (float64, error) {
	st, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return 0, fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	defer st.Close()
	before, err := prog.Stats()
	if err != nil {
		return 0, err
	}
	during()
	after, err := prog.Stats()
	if err != nil {
		return 0, err
	}
	if after.RunCount == before.RunCount {
		return 0, errors.New("the program did not run")
	}
	return float64(after.Runtime-before.Runtime) / float64(after.RunCount-before.RunCount), nil
}

// BenchmarkBaselines is this backend's two columns of the baseline
// tables (scripts/bench-baselines.sh, scripts/bench-sessions.sh): the XDP
// program and the TC program, each forced on both interfaces.
func BenchmarkBaselines(b *testing.B) {
	testutil.Command(b, "iperf3", "iperf3")
	netlab.BenchBaselines(b,
		benchColumn("ebpf-xdp", dataplane.AttachXDP, dataplane.AttachedXDP),
		benchColumn("ebpf-tc", dataplane.AttachTC, dataplane.AttachedTC))
}
