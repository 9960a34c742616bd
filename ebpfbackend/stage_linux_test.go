package ebpfbackend

import (
	"context"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []uint32
		bad  bool
	}{
		{in: "0", want: []uint32{0}},
		{in: "0-3", want: []uint32{0, 1, 2, 3}},
		{in: "0-1,4,6-7", want: []uint32{0, 1, 4, 6, 7}},
		{in: "254-300", want: []uint32{254, 255}}, // FW_MAX_CPUS caps the list
		{in: "", bad: true},
		{in: "3-1", bad: true},
		{in: "x", bad: true},
		{in: "1-", bad: true},
	} {
		got, err := parseCPUList(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("%q: error %v, want error %v", tc.in, err, tc.bad)
			continue
		}
		if diff := cmp.Diff(tc.want, got); !tc.bad && diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.in, diff)
		}
	}
}

// applyRate1 applies the lab config with every frame of the client
// ingress mirrored.
func (m *mirrorLab) applyRate1(t *testing.T) {
	t.Helper()
	if _, err := m.b.Apply(context.Background(), m.config(1)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// replaceBackend swaps the lab's backend for one made with opts (NetNS
// filled in).
func (m *mirrorLab) replaceBackend(t *testing.T, opts *Options) {
	t.Helper()
	m.b.Close()
	o := *opts
	o.NetNS = m.l.Firewall.Path
	var err error
	if m.b, err = New(context.Background(), &o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.b.Close() })
}

// stageState reads the stage counters and, for every online CPU, whether
// it has a cpumap queue and which stage CPU it hands to.
func (m *mirrorLab) stageState(t *testing.T) (cpus, handed, inline uint64, queues int, targets map[uint32]uint32) {
	t.Helper()
	rep, err := m.b.ResourceStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cpus, _ = rep.Counter("mirror_stage_cpus", "mirror")
	handed, _ = rep.Counter("mirror_stage_handed_packets", "mirror")
	inline, _ = rep.Counter("mirror_stage_forwarded_inline_packets", "mirror")
	online, err := onlineCPUs()
	if err != nil {
		t.Fatal(err)
	}
	targets = map[uint32]uint32{}
	m.b.mu.RLock()
	objs := m.b.objs
	m.b.mu.RUnlock()
	for _, c := range online {
		var v cpumapVal
		switch err := objs.FwCpus.Lookup(c, &v); {
		case err == nil:
			queues++
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			t.Fatalf("cpumap lookup CPU %d: %v", c, err)
		}
		var tgt uint32
		if err := objs.FwStageCpu.Lookup(c, &tgt); err != nil {
			t.Fatal(err)
		}
		if tgt != 0 {
			targets[c] = tgt - 1
		}
	}
	return cpus, handed, inline, queues, targets
}

// TestMirrorStage: a rate-1 rule hands its ingress to the stage on the
// next CPU, which forwards and clones every frame; sparse sampling, the
// MirrorInline option and a config without mirroring leave no stage.
func TestMirrorStage(t *testing.T) {
	m := newMirrorLab(t, true)
	ctx := context.Background()
	m.applyRate1(t)
	cpus, _, _, queues, targets := m.stageState(t)
	online, _ := onlineCPUs()
	if len(online) < 2 {
		// One CPU: no stage, clones inline (checked, not skipped).
		if cpus != 0 || queues != 0 || len(targets) != 0 {
			t.Errorf("one online CPU: stage CPUs %d, queues %d, targets %d; want none", cpus, queues, len(targets))
		}
		return
	}
	if int(cpus) != len(online) || queues != len(online) || len(targets) != len(online) {
		t.Fatalf("stage: %d CPUs reported, %d queues, %d targets; want %d each", cpus, queues, len(targets), len(online))
	}
	for src, dst := range targets {
		if src == dst {
			t.Errorf("CPU %d is its own stage", src)
		}
	}

	// A burst the stage takes in full: every frame forwarded and cloned
	// through it, none shed.
	frame := m.udp4(40000, mirrorPort, 18)
	m.flood(t, frame, 100)
	s0, v0 := m.settle(t, m.sink), m.settle(t, m.server)
	c0, _ := m.counts(t)
	_, h0, i0, _, _ := m.stageState(t)
	const n = 1000
	m.flood(t, frame, n)
	sink, server := m.settle(t, m.sink)-s0, m.settle(t, m.server)-v0
	c1, _ := m.counts(t)
	_, h1, i1, _, _ := m.stageState(t)
	t.Logf("burst of %d: server %d, sink %d, handed to the stage %d, forwarded inline %d, shed %d", n, server, sink, h1-h0, i1-i0, c1.Backlog-c0.Backlog)
	// Server and sink count the flow; mirrored_packets also counts the
	// client stack's odd ND or MLD frame.
	if mirrored := c1.Mirrored - c0.Mirrored; server != n || sink != n || mirrored < n || mirrored > n+noise {
		t.Errorf("server %d, sink %d, mirrored %d; want %d each (mirrored: up to %d more)", server, sink, mirrored, n, noise)
	}
	if h1-h0 < n || i1 != i0 || c1.Backlog != c0.Backlog {
		t.Errorf("handed %d (want >= %d), inline %d, shed %d (want 0 each)", h1-h0, n, i1-i0, c1.Backlog-c0.Backlog)
	}

	// 1 in 10 is cloned where the frame arrives: no stage.
	if _, err := m.b.Apply(ctx, m.config(10)); err != nil {
		t.Fatalf("Apply rate 10: %v", err)
	}
	_, h0, _, _, _ = m.stageState(t)
	m.flood(t, frame, n)
	m.settle(t, m.server)
	if _, h1, _, _, _ = m.stageState(t); h1 != h0 {
		t.Errorf("rate 10: %d frames handed to the stage, want 0", h1-h0)
	}

	// Without mirroring the stage goes away.
	plain := m.config(1)
	plain.PortMirroring = nil
	if _, err := m.b.Apply(ctx, plain); err != nil {
		t.Fatalf("Apply without mirroring: %v", err)
	}
	if _, _, _, queues, targets := m.stageState(t); queues != 0 || len(targets) != 0 {
		t.Errorf("after mirroring was removed: %d cpumap queues, %d stage targets left", queues, len(targets))
	}
}

// TestMirrorInlineOption: MirrorInline clones on the receiving CPU.
func TestMirrorInlineOption(t *testing.T) {
	m := newMirrorLab(t, true)
	m.replaceBackend(t, &Options{MirrorInline: true})
	m.applyRate1(t)
	frame := m.udp4(40000, mirrorPort, 18)
	m.flood(t, frame, 100)
	s0 := m.settle(t, m.sink)
	m.flood(t, frame, 1000)
	if n := m.settle(t, m.sink) - s0; n != 1000 {
		t.Errorf("sink received %d of 1000 clones", n)
	}
	cpus, handed, _, queues, targets := m.stageState(t)
	if cpus != 0 || handed != 0 || queues != 0 || len(targets) != 0 {
		t.Errorf("MirrorInline: stage CPUs %d, handed %d, queues %d, targets %d; want none", cpus, handed, queues, len(targets))
	}
}

// TestMirrorStageStarved: frames a stage has not taken stay counted in
// flight however long it takes (a starved stage must not get more than its
// queue holds): the receiving CPU forwards everything itself, sheds the
// clones and loses no primary frame; making the queues afresh writes them
// off and hand-over resumes.
func TestMirrorStageStarved(t *testing.T) {
	if runtime.NumCPU() < 2 {
		// Not a privilege skip: with one CPU there is no stage to starve
		// (TestMirrorStage checks that none is made).
		t.Skip("the mirror stage needs two online CPUs; this machine has one")
	}
	m := newMirrorLab(t, true)
	ctx := context.Background()
	m.applyRate1(t)
	frame := m.udp4(40000, mirrorPort, 18)
	m.flood(t, frame, 100)
	m.settle(t, m.server)

	// Pretend every CPU handed over 3500 frames the stage never took:
	// more than FW_STAGE_LIMIT in flight.
	const phantom = 3500
	m.b.mu.RLock()
	objs := m.b.objs
	m.b.mu.RUnlock()
	var per []fwFwStageProd
	if err := objs.FwStageProdMap.Lookup(uint32(0), &per); err != nil {
		t.Fatal(err)
	}
	for i := range per {
		per[i].Sent += phantom
		per[i].Credit = 0 // look at the stage on the next frame
	}
	if err := objs.FwStageProdMap.Update(uint32(0), per, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	lost := func() uint64 {
		rep, err := m.b.ResourceStats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := rep.Counter("mirror_stage_lost_packets", "mirror")
		return v
	}
	lost0 := lost()

	for round := range 2 {
		// Plain settles: the phantom frames never leave the stage's
		// count, and these frames are forwarded inline.
		s0, v0 := settle(t, m.sink), settle(t, m.server)
		c0, _ := m.counts(t)
		_, h0, i0, _, _ := m.stageState(t)
		m.flood(t, frame, 500)
		sink, server := settle(t, m.sink)-s0, settle(t, m.server)-v0
		c1, _ := m.counts(t)
		_, h1, i1, _, _ := m.stageState(t)
		t.Logf("round %d, stage looking stalled: server %d, sink %d, handed %d, inline %d, shed %d", round, server, sink, h1-h0, i1-i0, c1.Backlog-c0.Backlog)
		// The client's stack may add the odd ND or MLD frame to the
		// ingress: inline and shed may exceed the flood by that noise.
		inl, shed := i1-i0, c1.Backlog-c0.Backlog
		if server != 500 || sink != 0 || h1 != h0 || inl < 500 || inl > 500+noise || shed != inl {
			t.Errorf("round %d: server %d (want 500), sink %d, handed %d (want 0 each), inline %d, shed %d (want 500, up to %d more, equal)", round, server, sink, h1-h0, inl, shed, noise)
		}
		time.Sleep(50 * time.Millisecond) // long past any time-based write-off
	}
	if l := lost(); l != lost0 {
		t.Errorf("the datapath wrote off %d frames by itself", l-lost0)
	}

	// New queues: the phantoms are written off and hand-over resumes.
	plain := m.config(1)
	plain.PortMirroring = nil
	if _, err := m.b.Apply(ctx, plain); err != nil {
		t.Fatalf("Apply without mirroring: %v", err)
	}
	if _, err := m.b.Apply(ctx, m.config(1)); err != nil {
		t.Fatalf("Apply with mirroring: %v", err)
	}
	s0, v0 := m.settle(t, m.sink), m.settle(t, m.server)
	_, h0, _, _, _ := m.stageState(t)
	m.flood(t, frame, 1000)
	sink, server := m.settle(t, m.sink)-s0, m.settle(t, m.server)-v0
	_, h1, _, _, _ := m.stageState(t)
	t.Logf("after new queues: written off %d, handed %d, server %d, sink %d", lost()-lost0, h1-h0, server, sink)
	// The phantoms were written into live per-CPU state: a stray ND or
	// MLD frame handed over between that read and write is lost to the
	// count (and written off with them).
	if got, want := lost()-lost0, uint64(phantom*len(per)); got+noise < want || got > want+noise {
		t.Errorf("mirror_stage_lost_packets +%d, want %d ± %d (every CPU's phantoms)", got, want, noise)
	}
	if h1-h0 < 1000 || server != 1000 || sink != 1000 {
		t.Errorf("after new queues: handed %d, server %d, sink %d; want 1000 each", h1-h0, server, sink)
	}
}

// TestNamedMapsComplete: ResourceStats reports every map of the program
// (bpf2go's fwMaps), each once.
func TestNamedMapsComplete(t *testing.T) {
	var o fwObjects
	seen := map[string]bool{}
	for _, nm := range o.named() {
		if seen[nm.name] {
			t.Errorf("%s listed twice", nm.name)
		}
		seen[nm.name] = true
	}
	typ := reflect.TypeOf(o.fwMaps)
	for i := range typ.NumField() {
		name := typ.Field(i).Tag.Get("ebpf")
		if !seen[name] {
			t.Errorf("map %s is missing from ResourceStats (fwObjects.named)", name)
		}
		delete(seen, name)
	}
	for name := range seen {
		t.Errorf("named() lists %s, which the program does not have", name)
	}
}

// TestMirrorRefusedOnGenericXDP: mirroring an input attached in generic
// (skb) mode fails closed: a generic redirect gives the devmap program no
// metadata, so no clone could be restored (measured: none arrived). Apply
// fails with ErrNotSupported and the dataplane runs as before.
func TestMirrorRefusedOnGenericXDP(t *testing.T) {
	m := newMirrorLab(t, true)
	m.replaceBackend(t, &Options{ForceGenericXDP: true})
	plain := m.config(1)
	plain.PortMirroring = nil
	if _, err := m.b.Apply(context.Background(), plain); err != nil {
		t.Fatalf("Apply without mirroring: %v", err)
	}
	gen := m.b.gen
	_, err := m.b.Apply(context.Background(), m.config(1))
	if !errors.Is(err, dataplane.ErrNotSupported) || !strings.Contains(err.Error(), m.l.FwClientIf) || !strings.Contains(err.Error(), "generic") {
		t.Fatalf("Apply with mirroring on generic XDP: %v, want ErrNotSupported naming %s and generic mode", err, m.l.FwClientIf)
	}
	if m.b.gen != gen {
		t.Errorf("generation %d -> %d: the refused Apply changed the dataplane", gen, m.b.gen)
	}
	frame := m.udp4(40000, mirrorPort, 18)
	m.flood(t, frame, 100)
	s0, v0 := m.settle(t, m.sink), m.settle(t, m.server)
	m.flood(t, frame, 1000)
	if sink, server := m.settle(t, m.sink)-s0, m.settle(t, m.server)-v0; server != 1000 || sink != 0 {
		t.Errorf("after the refused Apply: server %d (want 1000), sink %d (want 0)", server, sink)
	}
	if _, _, _, queues, targets := m.stageState(t); queues != 0 || len(targets) != 0 {
		t.Errorf("after the refused Apply: %d stage queues, %d targets", queues, len(targets))
	}
}
