package dptest

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/packet"
)

func init() {
	Register(Case{Name: "mirror/clones", Config: mirrorConfig, Run: mirrorClones})
}

// mirrorConfig mirrors every frame arriving on the client link to the
// sink (a SPAN port: not a managed interface).
func mirrorConfig(e *Env) *dataplane.Config {
	c := Base(e.Lab)
	c.PortMirroring = []dataplane.MirrorRule{{Input: e.Lab.FwClientIf, Output: e.Lab.FwSinkIf}}
	return c
}

// mirrorClones: with rate 0 the sink receives a clone of every frame of
// the client's flows, whole (as received: the client's MACs and TTL), and
// the rule's counters say so; with rate 4 it receives fewer.
func mirrorClones(t testing.TB, e *Env) {
	l := e.Lab
	scope := fmt.Sprintf("mirror %s->%s", l.FwClientIf, l.FwSinkIf)
	mirrored := func() uint64 {
		v, _ := e.Report(t).Counter("mirrored_packets", scope)
		return v
	}
	run := func(n int) (clones int, counted uint64) {
		cap, err := Capture(l.Lab.Sink, l.SinkIf)
		if err != nil {
			t.Fatal(err)
		}
		defer cap.Close()
		before := mirrored()
		base := e.ports.Load() + 1
		var flows []Flow
		for i := range n {
			flows = append(flows, e.UDPFlow(fmt.Sprintf("flow %d", i), l.ServerAddr4, PortUDP, Answered))
		}
		Expect(t, flows...)
		clones = cap.Count(Silence, func(i packet.Info) bool {
			p := uint32(i.Src.Port())
			return i.Src.Addr() == l.ClientAddr4 && i.Dst == netip.AddrPortFrom(l.ServerAddr4, PortUDP) &&
				p >= base && p < base+uint32(n) && i.TTL == packet.DefaultTTL && i.SrcMAC.String() == l.ClientMAC.String()
		})
		return clones, mirrored() - before
	}
	const n = 20
	clones, counted := run(n)
	if clones != n {
		t.Errorf("rate 0: %d clones of the %d client frames at the sink, want every one, as received", clones, n)
	}
	if counted < n {
		t.Errorf("rate 0: mirrored_packets rose by %d, want >= %d", counted, n)
	}

	c := e.Applied.Clone()
	c.PortMirroring[0].Rate = 4
	e.Apply(t, c)
	const m = 40
	clones, _ = run(m)
	if clones == 0 || clones >= m {
		t.Errorf("rate 4: %d clones of %d frames, want about one in four", clones, m)
	}
}
