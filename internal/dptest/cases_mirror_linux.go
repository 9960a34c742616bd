package dptest

import (
	"fmt"
	"net/netip"
	"strings"
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
	// mirrored reads the rule's clones and its drops (every counter of
	// its scope named mirror_dropped_*: mirroring is lossy by contract, and
	// every loss is counted with its reason).
	mirrored := func() (clones, dropped uint64) {
		for _, c := range e.Report(t).Counters {
			switch {
			case c.Scope != scope:
			case c.Name == "mirrored_packets":
				clones = c.Value
			case strings.HasPrefix(c.Name, "mirror_dropped_"):
				dropped += c.Value
			}
		}
		return clones, dropped
	}
	run := func(n int) (clones int, counted, dropped uint64) {
		cap, err := Capture(l.Lab.Sink, l.SinkIf)
		if err != nil {
			t.Fatal(err)
		}
		defer cap.Close()
		c0, d0 := mirrored()
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
		c1, d1 := mirrored()
		return clones, c1 - c0, d1 - d0
	}
	const n = 20
	clones, counted, dropped := run(n)
	// Every frame of the flows arrived on the input: each is a clone at
	// the sink, as received, or a counted drop. (The counters may also
	// hold the client's own neighbour discovery on backends that see it.)
	if uint64(clones)+dropped < n || clones < n/2 {
		t.Errorf("rate 0: %d clones of the %d client frames at the sink, %d mirror drops counted; want every frame cloned, as received, or counted",
			clones, n, dropped)
	}
	if counted < uint64(clones) {
		t.Errorf("rate 0: mirrored_packets rose by %d, fewer than the %d clones the sink received", counted, clones)
	}

	c := e.Applied.Clone()
	c.PortMirroring[0].Rate = 4
	e.Apply(t, c)
	const m = 40
	clones, _, _ = run(m)
	if clones == 0 || clones >= m {
		t.Errorf("rate 4: %d clones of %d frames, want about one in four", clones, m)
	}
}
