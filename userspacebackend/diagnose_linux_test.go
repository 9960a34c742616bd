package userspacebackend

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fwplane/fwplane/diagnose"
)

// TestIntegrationDiagnoseFillRingNotRefilled: the worker of the client
// binding stops (held at the top of its loop by the test hook), so its
// fill ring is never refilled while frames keep arriving. The diagnose
// checklist names it under the fill question, with the kernel's own
// fill-ring-empty count; the other binding stays ok.
func TestIntegrationDiagnoseFillRingNotRefilled(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	// The heartbeat check off: with it, the shim drops a stalled worker's
	// frames after the heartbeat limit (TestIntegrationStuckWorkerDropsAtShim), and the
	// fault this test injects is the fill ring itself.
	b := newBackend(t, e, &Options{HeartbeatLimit: -1}, netlabConfig(l))
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	var stall atomic.Bool
	hook := func(bd *binding) {
		for bd.port.name == l.FwClientIf && stall.Load() {
			time.Sleep(time.Millisecond)
		}
	}
	testHook.Store(&hook)
	// Release the worker before the backend closes (cleanups run last
	// registered first).
	t.Cleanup(func() { stall.Store(false); testHook.Store(nil) })
	stall.Store(true)

	// Traffic into the stalled binding: first more frames than its fill
	// ring holds, then a trickle for as long as diagnose looks, so the
	// kernel finds the ring empty within the window.
	var fillSize uint64
	for _, res := range report(t, b).Resources {
		if res.Name == "fill_ring_empty" && res.Scope == l.FwClientIf+"/q0" {
			fillSize = res.Capacity
		}
	}
	if fillSize == 0 {
		t.Fatal("no fill ring row for the client binding")
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Client.Do(func() error {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.ServerAddr4, portUDP)))
			if err != nil {
				return err
			}
			defer c.Close()
			for i := uint64(0); ; i++ {
				select {
				case <-stop:
					return nil
				default:
				}
				c.Write([]byte("starve"))
				if i > 2*fillSize {
					time.Sleep(200 * time.Microsecond)
				}
			}
		})
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		rep := report(t, b)
		row, _ := rep.Find("fill_ring_empty", l.FwClientIf+"/q0")
		empty, _ := rep.Counter("xdp_rx_fill_ring_empty_descs", l.FwClientIf+"/q0")
		if empty > 0 {
			break
		}
		if time.Now().After(deadline) {
			rx, _ := rep.Find("rx_ring", l.FwClientIf+"/q0")
			redirected, _ := rep.Counter("shim_redirected", l.FwClientIf)
			full, _ := rep.Counter("xdp_rx_ring_full", l.FwClientIf+"/q0")
			t.Fatalf("the stalled binding's fill ring never ran dry: fill ring %d of %d empty, rx ring %d of %d, shim redirected %d, rx ring full %d",
				*row.Used, row.Capacity, *rx.Used, rx.Capacity, redirected, full)
		}
		time.Sleep(10 * time.Millisecond)
	}
	in, err := diagnose.Gather(context.Background(), b, &diagnose.GatherOptions{Window: time.Second, NetNS: l.Firewall.Path})
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	in.Managed = []string{l.FwClientIf, l.FwServerIf}
	r := diagnose.Run(in)
	c, _ := r.Check("fill")
	figs := strings.Join(c.Figures, "\n")
	if c.Verdict != diagnose.Failing || !strings.Contains(figs, l.FwClientIf+"/q0: fill ring 100% empty") || strings.Contains(figs, l.FwServerIf) {
		t.Errorf("fill check: %s\n%s\nwant failing for %s/q0 only", c.Verdict, figs, l.FwClientIf)
	}
	if !strings.Contains(figs, "kernel found it empty") || strings.Contains(figs, "kernel found it empty 0 in") {
		t.Errorf("fill check lacks the kernel's fill-ring-empty count: %s", figs)
	}
	if !r.Failed() {
		t.Error("report not failed")
	}
}
