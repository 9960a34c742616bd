package ebpfbackend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netlab"
)

// testPinDir returns a fresh pin directory under /sys/fs/bpf/fwplane/ that
// the test removes (with whatever is pinned in it) when it ends.
func testPinDir(t *testing.T) string {
	t.Helper()
	var rnd [4]byte
	rand.Read(rnd[:])
	dir := filepath.Join("/sys/fs/bpf/fwplane", "test-"+hex.EncodeToString(rnd[:]))
	t.Cleanup(func() {
		if hasPinnedDataplane(dir) {
			if err := RemovePinned(dir); err != nil {
				t.Errorf("remove %s: %v", dir, err)
			}
		}
		os.Remove(dir)
	})
	return dir
}

// tcxAttached lists the program IDs on an interface's tcx ingress.
func tcxAttached(t *testing.T, l *netlab.Lab, iface string) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	err := l.Firewall.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifi.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("query tcx programs of %s: %v", iface, err)
	}
	return ids
}

// TestIntegrationPinnedOutlivesRelease: a pinned dataplane keeps enforcing
// after its process lets go (Release, as after a crash), a new backend
// adopts it with its sessions and generation, an established TCP
// connection carries on across the hand-over, and Close removes it all.
func TestIntegrationPinnedOutlivesRelease(t *testing.T) {
	tl := newTCLab(t, nil, 0, nil)
	l, b := tl.l, tl.b
	b.Close() // the lab's unpinned backend: replaced by a pinned one
	dir := testPinDir(t)
	ctx := context.Background()
	cfg := netlabConfig(l)
	for i := range cfg.Interfaces {
		cfg.Interfaces[i].Attach = ""
	}
	b1, err := New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b1.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := udpRT(l, 43000, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
		t.Fatalf("before: %v", err)
	}
	// An established TCP connection across the whole test.
	var conn net.Conn
	err = l.Client.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(l.ServerAddr4, portTCP).String(), 2*time.Second)
		conn = c
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo := func(what string) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write([]byte(what)); err != nil {
			t.Fatalf("%s: write: %v", what, err)
		}
		buf := make([]byte, len(what))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != what {
			t.Fatalf("%s: echo %q, %v", what, buf, err)
		}
	}
	echo("before release")
	before, _, err := b1.Sessions(ctx, 0)
	if err != nil || len(before) < 2 {
		t.Fatalf("sessions before: %d, %v", len(before), err)
	}
	progsBefore := tcxAttached(t, l, l.FwClientIf)

	if err := b1.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	// No process holds the dataplane now: the kernel still enforces it.
	if got := tcxAttached(t, l, l.FwClientIf); len(got) != 1 || got[0] != progsBefore[0] {
		t.Fatalf("after Release: tcx programs %v, want the one that ran (%v)", got, progsBefore)
	}
	echo("while no process holds it")
	if err := udpRT(l, 43000, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
		t.Errorf("allowed flow after Release: %v", err)
	}
	if err := udpRT(l, 43001, l.ServerAddr4, portDenied, 300*time.Millisecond); err == nil {
		t.Error("denied flow passed while no process held the dataplane")
	}

	b2, err := New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir})
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	defer b2.Close()
	adopted, _, err := b2.Sessions(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range before {
		found := false
		for _, a := range adopted {
			found = found || (a.Source == s.Source && a.Destination == s.Destination && a.Protocol == s.Protocol)
		}
		if !found {
			t.Errorf("session %s %s -> %s lost in the adoption", s.Protocol, s.Source, s.Destination)
		}
	}
	res, err := b2.Apply(ctx, cfg)
	if err != nil {
		t.Fatalf("Apply after adoption: %v", err)
	}
	if res.Generation != 2 {
		t.Errorf("generation after adoption = %d, want 2 (continuing from 1)", res.Generation)
	}
	if got := tcxAttached(t, l, l.FwClientIf); len(got) != 1 || got[0] == progsBefore[0] {
		t.Errorf("after adoption: tcx programs %v; want one, this build's (not %v)", got, progsBefore)
	}
	echo("after adoption")
	if err := udpRT(l, 43001, l.ServerAddr4, portDenied, 300*time.Millisecond); err == nil {
		t.Error("denied flow passed after the adoption")
	}

	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tcxAttached(t, l, l.FwClientIf); len(got) != 0 {
		t.Errorf("after Close: tcx programs %v, want none", got)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close: %s still exists (%v)", dir, err)
	}
}

// TestIntegrationAdoptRefusesIncompatible: a pinned dataplane of another
// layout is refused, naming the difference, and keeps running untouched;
// ReplaceIncompatible replaces it.
func TestIntegrationAdoptRefusesIncompatible(t *testing.T) {
	tl := newTCLab(t, nil, 0, nil)
	l := tl.l
	tl.b.Close()
	dir := testPinDir(t)
	ctx := context.Background()
	cfg := netlabConfig(l)
	for i := range cfg.Interfaces {
		cfg.Interfaces[i].Attach = ""
	}
	b1, err := New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b1.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := udpRT(l, 44000, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := b1.Release(); err != nil {
		t.Fatal(err)
	}
	progs := tcxAttached(t, l, l.FwClientIf)

	testLayoutVersion = layoutVersion + 1
	defer func() { testLayoutVersion = 0 }()
	_, err = New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir})
	if !errors.Is(err, ErrIncompatiblePin) || !strings.Contains(err.Error(), "layout version 1 pinned, 2 in this build") {
		t.Fatalf("adopting another layout: %v; want ErrIncompatiblePin naming both versions", err)
	}
	if got := tcxAttached(t, l, l.FwClientIf); len(got) != 1 || got[0] != progs[0] {
		t.Errorf("after the refusal: programs %v, want %v untouched", got, progs)
	}
	if err := udpRT(l, 44000, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
		t.Errorf("the session stopped passing after a refused adoption: %v", err)
	}

	b3, err := New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir, ReplaceIncompatible: true})
	if err != nil {
		t.Fatalf("replace: %v", err)
	}
	defer b3.Close()
	if got := tcxAttached(t, l, l.FwClientIf); len(got) != 0 {
		t.Errorf("replaced: programs %v still attached before the first Apply", got)
	}
	if _, err := b3.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if c := sessionCounts(t, b3); c.Total != 0 {
		t.Errorf("replaced dataplane has %d sessions, want 0 (stated loss)", c.Total)
	}
}

// TestIntegrationSweepWithoutProcess: sessions of a released dataplane
// expire in the kernel, with no process to reap them.
func TestIntegrationSweepWithoutProcess(t *testing.T) {
	tl := newTCLab(t, nil, 0, nil)
	l := tl.l
	tl.b.Close()
	dir := testPinDir(t)
	ctx := context.Background()
	cfg := netlabConfig(l)
	for i := range cfg.Interfaces {
		cfg.Interfaces[i].Attach = ""
	}
	cfg.Timeouts.UDP = dataplane.Duration(time.Second)
	cfg.Timeouts.UDPUnreplied = dataplane.Duration(time.Second)
	b1, err := New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir, SessionSweepInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b1.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for p := uint16(45000); p < 45010; p++ {
		if err := udpRT(l, p, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := b1.Release(); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "fw_sessions_v4"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	count := func() int {
		var k fwFwSess4Key
		var v fwFwSessVal
		n := 0
		it := m.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		return n
	}
	if n := count(); n < 10 {
		t.Fatalf("%d sessions pinned after Release, want >= 10", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for count() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still pinned 5 s after their 1 s timeout, with no process", count())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
