package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fwplane/fwplane"
	"github.com/fwplane/fwplane/control"
	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/dptest"
	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/packet"
	"github.com/fwplane/fwplane/internal/testutil"
)

// The kill tests run fwd as a process of its own (this test binary,
// re-executed into fwd's main) so that kill -9 is a real crash: the
// kernel closes its files and sockets, nothing of fwd runs on the way out.

const execEnv = "FWPLANE_FWD_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(execEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// Ports of the kill tests' flows.
const (
	killAllowed = 7000 // answered: a UDP round trip
	killDenied  = 7001 // no policy: a paced stream that must never arrive
	killFlood   = 7100 // the flood, counted (and dropped) at the server
	killTCP     = 7200 // the established TCP connection
)

// killLab is a lab for the kill tests: the flood counted at the server's
// interface, the denied stream counted by a socket on the server, an echo
// server for the allowed flow and the TCP connection.
type killLab struct {
	l                *netlab.Lab
	floodCnt         *netlab.Counter
	deniedRcvd       atomic.Uint64
	deniedSent       atomic.Uint64
	dir, cfg, socket string
	pinDir           string
}

func newKillLab(t *testing.T) *killLab {
	t.Helper()
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := netlab.NewT(t, nil)
	ctx := context.Background()
	if err := l.ResolveNeighbors(ctx); err != nil {
		t.Fatal(err)
	}
	k := &killLab{l: l, dir: t.TempDir(), pinDir: netlab.PinDir(t)}
	var err error
	// The client end runs a pass-through counter so that it has NAPI
	// (frames the userspace backend transmits into its peer arrive).
	cc, err := netlab.AttachCounter(l.Client, l.ClientIf, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	if k.floodCnt, err = netlab.AttachCounter(l.Server, l.ServerIf, &netlab.CounterOptions{Proto: 17, DstPort: killFlood, Drop: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.floodCnt.Close() })
	stop, err := netlab.UDPEcho(ctx, l.Server, netip.AddrPortFrom(l.ServerAddr4, killAllowed))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	stop, err = netlab.TCPEcho(ctx, l.Server, netip.AddrPortFrom(l.ServerAddr4, killTCP))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	// The denied flow's receiver: every datagram that reaches the server.
	var pc net.PacketConn
	if err := l.Server.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(l.ServerAddr4, killDenied).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			k.deniedRcvd.Add(1)
		}
	}()

	k.cfg = filepath.Join(k.dir, "fw.json")
	k.socket = filepath.Join(k.dir, "fwd.sock")
	writeConfig(t, k.cfg, &dataplane.Config{
		Interfaces: []dataplane.Interface{{Name: l.FwClientIf, Zone: "inside"}, {Name: l.FwServerIf, Zone: "outside"}},
		Zones:      []dataplane.Zone{{Name: "inside"}, {Name: "outside"}},
		Policies: []dataplane.Policy{
			{FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoUDP,
				DestinationPorts: []dataplane.PortRange{{First: killAllowed, Last: killAllowed}, {First: killFlood, Last: killFlood}}, Action: dataplane.ActionAllow},
			{FromZone: "inside", ToZone: "outside", Protocol: dataplane.ProtoTCP,
				DestinationPorts: []dataplane.PortRange{{First: killTCP, Last: killTCP}}, Action: dataplane.ActionAllow},
		},
	})
	return k
}

// fwdProc is an exec'd fwd.
type fwdProc struct {
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan error
}

// startFwd execs fwd on the lab with the backend given and waits until its
// control socket answers.
func (k *killLab) startFwd(t *testing.T, backend string, extra ...string) *fwdProc {
	t.Helper()
	args := append([]string{"--config", k.cfg, "--netns", k.l.Firewall.Path, "--socket", k.socket, "--metrics", "",
		"--history-interval", "0", "--backend", backend, "--strict", "--pin-dir", k.pinDir}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), execEnv+"=1")
	p := &fwdProc{cmd: cmd, logs: &syncBuffer{}, exited: make(chan error, 1)}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() { p.kill() })
	c := control.NewClient(k.socket, &control.ClientOptions{Timeout: 2 * time.Second})
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.Capability(context.Background()); err == nil {
			return p
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("fwd exited: %v\n%s", err, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("fwd not answering after 30s:\n%s", p.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *fwdProc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (p *fwdProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("fwd exit after SIGTERM: %v\n%s", err, p.logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("fwd did not exit on SIGTERM:\n%s", p.logs.String())
	}
}

// flood sends 64-byte frames of the flood flow from the client, in bursts
// of 10 000 every 100 ms (about 100 k frames a second, a rate both
// backends forward on this lab, so the machine stays usable for the rest
// of the test), until the test ends.
func (k *killLab) flood(t *testing.T) {
	t.Helper()
	f, err := k.l.ClientFlood(netlab.FloodSpec{Proto: packet.ProtoUDP, Dst: netip.AddrPortFrom(k.l.ServerAddr4, killFlood), Count: 10000})
	if err != nil {
		t.Fatal(err)
	}
	f.Chunk = 10000
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for ctx.Err() == nil {
			f.Run(ctx)
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// denied sends one datagram a millisecond to the denied port until the
// test ends.
func (k *killLab) denied(t *testing.T) {
	t.Helper()
	var conn net.Conn
	if err := k.l.Client.Do(func() error {
		var err error
		conn, err = net.Dial("udp", netip.AddrPortFrom(k.l.ServerAddr4, killDenied).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte("denied")); err == nil {
				k.deniedSent.Add(1)
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; conn.Close() })
}

func (k *killLab) flooded(t *testing.T) uint64 {
	t.Helper()
	n, _, err := k.floodCnt.Read()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func pollUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tcpConn is an established TCP connection from the client to the
// server's echo port.
func (k *killLab) tcpConn(t *testing.T) net.Conn {
	t.Helper()
	var conn net.Conn
	if err := k.l.Client.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(k.l.ServerAddr4, killTCP).String(), 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func echo(conn net.Conn, what string) error {
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte(what)); err != nil {
		return fmt.Errorf("%s: write: %w", what, err)
	}
	buf := make([]byte, len(what))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != what {
		return fmt.Errorf("%s: echo %q, %v", what, buf, err)
	}
	return nil
}

func showBuffers(t *testing.T, sock string) dataplane.ResourceReport {
	t.Helper()
	out, errOut, code := fwctl(t, "--socket", sock, "show", "system", "buffers", "--json")
	var r dataplane.ResourceReport
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
		t.Fatalf("fwctl show system buffers --json: exit %d\n%s%s", code, out, errOut)
	}
	return r
}

func showSessions(t *testing.T, sock string) control.SessionsReply {
	t.Helper()
	out, errOut, code := fwctl(t, "--socket", sock, "show", "sessions", "--json")
	var sr control.SessionsReply
	if code != 0 || json.Unmarshal([]byte(out), &sr) != nil {
		t.Fatalf("fwctl show sessions --json: exit %d\n%s%s", code, out, errOut)
	}
	return sr
}

// TestIntegrationKillFwdEBPF is issue 13's kill test on the eBPF backend:
// fwd forwards a flood; kill -9; for 5 s the flood keeps flowing (in every
// second of the 5) while not one datagram of a denied stream reaches the
// server; an established TCP connection carries on; fwd restarted with the
// same config adopts the dataplane and `fwctl show system buffers --json`
// counts the sessions that existed before the kill.
func TestIntegrationKillFwdEBPF(t *testing.T) {
	k := newKillLab(t)
	p := k.startFwd(t, "ebpf")
	if out, _, _ := fwctl(t, "--socket", k.socket, "show", "capability"); !strings.Contains(out, "pinned in "+k.pinDir) {
		t.Errorf("fwctl show capability does not say where the dataplane is pinned:\n%s", out)
	}
	k.flood(t)
	k.denied(t)
	conn := k.tcpConn(t)
	if err := echo(conn, "before the kill"); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(k.l, killAllowed); err != nil {
		t.Fatalf("allowed flow: %v", err)
	}
	pollUntil(t, "the flood forwarded", 5*time.Second, func() bool { return k.flooded(t) > 10000 })
	before := showBuffers(t, k.socket)
	sessBefore := showSessions(t, k.socket)
	if before.Sessions == nil || before.Sessions.Total < 3 {
		t.Fatalf("sessions before the kill: %+v, want the flood's, the allowed flow's and the TCP connection's", before.Sessions)
	}

	p.kill()
	t.Logf("fwd killed; %d denied datagrams sent so far, %d received", k.deniedSent.Load(), k.deniedRcvd.Load())
	sent0, flood0 := k.deniedSent.Load(), k.flooded(t)
	var perSecond []uint64
	last := flood0
	for range 5 {
		end := time.Now().Add(time.Second)
		if len(perSecond) == 2 {
			if err := echo(conn, "while no fwd runs"); err != nil {
				t.Errorf("established TCP with fwd dead: %v", err)
			}
		}
		time.Sleep(time.Until(end))
		n := k.flooded(t)
		perSecond = append(perSecond, n-last)
		last = n
	}
	deniedSent, deniedRcvd := k.deniedSent.Load()-sent0, k.deniedRcvd.Load()
	t.Logf("5 s after kill -9: flood frames at the server per second %v; denied datagrams sent %d, received %d", perSecond, deniedSent, deniedRcvd)
	for i, n := range perSecond {
		if n == 0 {
			t.Errorf("second %d after the kill: no flood frame reached the server: the allowed flow stopped", i+1)
		}
	}
	if deniedSent < 1000 {
		t.Errorf("only %d denied datagrams sent in 5 s: the window tested little", deniedSent)
	}
	if deniedRcvd != 0 {
		t.Errorf("%d denied datagrams reached the server: the firewall failed open", deniedRcvd)
	}

	p2 := k.startFwd(t, "ebpf", "--keep-dataplane")
	if out, _, _ := fwctl(t, "--socket", k.socket, "show", "capability"); !strings.Contains(out, "adopts the dataplane pinned in "+k.pinDir) {
		t.Errorf("fwctl show capability does not say the dataplane was adopted:\n%s", out)
	}
	if !strings.Contains(p2.logs.String(), "adopted=true") || !strings.Contains(p2.logs.String(), "generation=2") {
		t.Errorf("restarted fwd did not log the adoption at generation 2:\n%s", p2.logs.String())
	}
	after := showBuffers(t, k.socket)
	sessAfter := showSessions(t, k.socket)
	t.Logf("sessions before the kill %+v, after the restart %+v", *before.Sessions, *after.Sessions)
	if after.Sessions == nil || after.Sessions.Total < uint64(len(sessBefore.Sessions)) {
		t.Errorf("show system buffers after the restart counts %+v sessions, want at least the %d before the kill", after.Sessions, len(sessBefore.Sessions))
	}
	for _, s := range sessBefore.Sessions {
		found := false
		for _, a := range sessAfter.Sessions {
			found = found || (a.Protocol == s.Protocol && a.Source == s.Source && a.Destination == s.Destination)
		}
		if !found {
			t.Errorf("session %s %s -> %s lost across kill -9 and restart", s.Protocol, s.Source, s.Destination)
		}
	}
	if err := echo(conn, "after the restart"); err != nil {
		t.Errorf("established TCP after the restart: %v", err)
	}
	if k.deniedRcvd.Load() != 0 {
		t.Errorf("%d denied datagrams reached the server", k.deniedRcvd.Load())
	}

	// SIGTERM with --keep-dataplane: released, still enforcing.
	p2.stop(t)
	if !strings.Contains(p2.logs.String(), "dataplane released") {
		t.Errorf("no release line in the log:\n%s", p2.logs.String())
	}
	if _, err := os.Stat(k.pinDir); err != nil {
		t.Fatalf("pin directory gone after SIGTERM with --keep-dataplane: %v", err)
	}
	if err := echo(conn, "after the release"); err != nil {
		t.Errorf("established TCP after the release: %v", err)
	}
	if k.deniedRcvd.Load() != 0 {
		t.Errorf("%d denied datagrams reached the server after the release", k.deniedRcvd.Load())
	}
	// fwd --remove: the orphan goes, and with it the filtering (the
	// denied stream now reaches the server: the programs are detached).
	var logs syncBuffer
	if err := run(context.Background(), []string{"--remove", "kill-test", "--pin-dir", k.pinDir}, &env{stderr: &logs}); err != nil {
		t.Fatalf("fwd --remove: %v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "removed the pinned ebpf dataplane") {
		t.Errorf("fwd --remove said:\n%s", logs.String())
	}
	if _, err := os.Stat(k.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after fwd --remove: %v", err)
	}
	pollUntil(t, "the denied stream to arrive once the dataplane is removed", 3*time.Second, func() bool { return k.deniedRcvd.Load() > 0 })
}

// TestIntegrationKillFwdUserspace is issue 13's kill test on the userspace
// backend: fwd forwards a flood; kill -9; for 2 s not one frame of the
// flood or of the denied stream reaches the server while a ping to the
// firewall's own address is answered; fwd restarted with the same config
// forwards again within 2 s of its start, and reports the drops the
// pinned shims counted while no process ran.
func TestIntegrationKillFwdUserspace(t *testing.T) {
	k := newKillLab(t)
	p := k.startFwd(t, "userspace")
	k.flood(t)
	k.denied(t)
	if err := roundTrip(k.l, killAllowed); err != nil {
		t.Fatalf("allowed flow: %v", err)
	}
	pollUntil(t, "the flood forwarded", 5*time.Second, func() bool { return k.flooded(t) > 10000 })

	p.kill()
	// Frames forwarded just before the kill may still be on their way:
	// wait until the count stops for 100 ms (at 100 k frames/s a flowing
	// flood never does).
	first := k.flooded(t)
	last, since, deadline := first, time.Now(), time.Now().Add(2*time.Second)
	for time.Since(since) < 100*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("the flood kept reaching the server after kill -9 (%d frames in 2 s): the firewall failed open", last-first)
		}
		time.Sleep(10 * time.Millisecond)
		if n := k.flooded(t); n != last {
			last, since = n, time.Now()
		}
	}
	flood0, sent0 := last, k.deniedSent.Load()
	end := time.Now().Add(2 * time.Second)
	if pr := dptest.Ping(k.l.Client, k.l.FwClientAddr4, 4545, 2*time.Second); pr.Outcome != dptest.Answered {
		t.Errorf("ping to the firewall's own address %s with fwd dead: %v (%v)", k.l.FwClientAddr4, pr.Outcome, pr.Err)
	}
	time.Sleep(time.Until(end))
	transit, deniedSent := k.flooded(t)-flood0, k.deniedSent.Load()-sent0
	t.Logf("2 s after kill -9: %d flood frames and %d of %d denied datagrams reached the server", transit, k.deniedRcvd.Load(), deniedSent)
	if transit != 0 || k.deniedRcvd.Load() != 0 {
		t.Errorf("transit frames reached the server with fwd dead (flood %d, denied %d): the firewall failed open", transit, k.deniedRcvd.Load())
	}

	t0 := time.Now()
	p2 := k.startFwd(t, "userspace")
	answering := time.Since(t0)
	start := k.flooded(t)
	pollUntil(t, "forwarding to resume", 5*time.Second, func() bool { return k.flooded(t) > start })
	resumed := time.Since(t0)
	t.Logf("forwarding resumed %v after fwd was started again (its control socket answered at %v)", resumed.Round(time.Millisecond), answering.Round(time.Millisecond))
	if resumed > 2*time.Second {
		t.Errorf("forwarding resumed %v after the restart, want within 2s; fwd's log:\n%s", resumed, p2.logs.String())
	}
	rep := showBuffers(t, k.socket)
	if v, ok := rep.Counter("shim_drop_heartbeat_stale", "global"); !ok || v == 0 {
		t.Errorf("restarted fwd reports shim_drop_heartbeat_stale %d (found %v), want the drops made while no process ran", v, ok)
	} else {
		t.Logf("restarted fwd reports shim_drop_heartbeat_stale %d", v)
	}
	if err := roundTrip(k.l, killAllowed); err != nil {
		t.Errorf("allowed flow after the restart: %v", err)
	}
	if k.deniedRcvd.Load() != 0 {
		t.Errorf("%d denied datagrams reached the server", k.deniedRcvd.Load())
	}
	p2.stop(t)
	if _, err := os.Stat(k.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after SIGTERM: %v", err)
	}
}

// TestIntegrationFailedStartReleases: a fwd that fails after starting its
// pinned dataplane (here: the metrics address is taken) releases it, still
// enforcing, rather than removing it and opening the firewall; the next fwd
// with the same name adopts it.
func TestIntegrationFailedStartReleases(t *testing.T) {
	l := newLab(t, 7000, 7001)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "fw.json")
	writeConfig(t, cfgPath, labConfig(l, 7000))
	pinDir := netlab.PinDir(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var logs syncBuffer
	err = run(context.Background(), []string{"--config", cfgPath, "--netns", l.Firewall.Path, "--socket", filepath.Join(dir, "fwd.sock"),
		"--metrics", taken.Addr().String(), "--pin-dir", pinDir}, &env{stderr: &logs})
	if err == nil {
		t.Fatal("fwd started on a taken metrics address")
	}
	if !strings.Contains(logs.String(), "the pinned dataplane was released and keeps enforcing") {
		t.Errorf("no release on the failed start:\n%s", logs.String())
	}
	if err := roundTrip(l, 7000); err != nil {
		t.Errorf("allowed flow after the failed start: %v", err)
	}
	if err := roundTrip(l, 7001); err == nil {
		t.Error("denied flow passed after the failed start: the dataplane was removed")
	}
	if _, err := fwplane.RemovePinned(pinDir); err != nil {
		t.Errorf("remove the released dataplane: %v", err)
	}
}
