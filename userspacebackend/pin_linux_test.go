package userspacebackend

import (
	"bufio"
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

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/dptest"
	"github.com/fwplane/fwplane/internal/netlab"
)

// The pinned-dataplane tests run the dataplane in a child process (this
// test binary, re-executed) so that it can die as a real process dies:
// SIGKILL, its sockets closed by the kernel, nothing run on the way out.

const (
	childEnv    = "FWPLANE_USERSPACE_TEST_CHILD"
	portStream  = 6000 // the paced stream of the kill tests, counted (and dropped) at the server
	streamEvery = 500 * time.Microsecond
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "pinned" {
		os.Exit(runPinnedChild())
	}
	os.Exit(m.Run())
}

// runPinnedChild runs a pinned backend as the parent asks, prints "ready
// GEN" and runs until killed; stdin closing (the parent died) makes it exit
// as a crash would, leaving its pins for the next lab's sweep.
func runPinnedChild() int {
	cfg, err := dataplane.ParseConfig([]byte(os.Getenv("FWPLANE_CHILD_CONFIG")))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	ctx := context.Background()
	b, err := New(ctx, &Options{NetNS: os.Getenv("FWPLANE_CHILD_NETNS"), PinDir: os.Getenv("FWPLANE_CHILD_PINDIR")})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	res, err := b.Apply(ctx, cfg)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("ready", res.Generation)
	io.Copy(io.Discard, os.Stdin)
	return 1
}

// child is a pinned dataplane's process.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan error
}

// startChild starts a child running a pinned backend in the lab's firewall
// namespace and waits until it has applied cfg.
func startChild(t *testing.T, l *netlab.Lab, dir string, cfg *dataplane.Config) *child {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"=pinned", "FWPLANE_CHILD_NETNS="+l.Firewall.Path,
		"FWPLANE_CHILD_PINDIR="+dir, "FWPLANE_CHILD_CONFIG="+string(js))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, exited: make(chan error, 1)}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
		io.Copy(io.Discard, out)
		c.exited <- cmd.Wait()
	}()
	t.Cleanup(c.kill)
	select {
	case s := <-line:
		if !strings.HasPrefix(s, "ready") {
			t.Fatalf("child: %q", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("child not ready after 30s")
	}
	return c
}

// kill sends SIGKILL and waits until the process is gone (its files, and
// so its sockets, are closed before the parent can reap it).
func (c *child) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
	c.stdin.Close()
}

// stream sends UDP datagrams from the client to the server's portStream,
// one per streamEvery, until the test ends; sent counts them.
type stream struct{ sent atomic.Uint64 }

func startStream(t *testing.T, l *netlab.Lab) *stream {
	t.Helper()
	s := &stream{}
	var conn net.Conn
	err := l.Client.Do(func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(l.ServerAddr4, portStream).String())
		conn = c
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(streamEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte("stream")); err == nil {
				s.sent.Add(1)
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped; conn.Close() })
	return s
}

func serverCount(t *testing.T, e *labEnv) uint64 {
	t.Helper()
	n, _, err := e.serverCnt.Read()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serverSettled waits until the server's count stops moving for 100 ms
// (frames already on their way when the dataplane died have arrived; the
// stream sends one every 500 µs) and returns it.
func serverSettled(t *testing.T, e *labEnv) uint64 {
	t.Helper()
	first := serverCount(t, e)
	last, since, deadline := first, time.Now(), time.Now().Add(2*time.Second)
	for time.Since(since) < 100*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("the stream kept reaching the server with no dataplane process (%d frames in 2 s): the firewall failed open", last-first)
		}
		time.Sleep(10 * time.Millisecond)
		if n := serverCount(t, e); n != last {
			last, since = n, time.Now()
		}
	}
	return last
}

func streamConfig(l *netlab.Lab) *dataplane.Config {
	cfg := netlabConfig(l)
	cfg.Policies = append(cfg.Policies, dataplane.Policy{FromZone: "clients", ToZone: "servers", Protocol: dataplane.ProtoUDP,
		DestinationPorts: []dataplane.PortRange{{First: portStream, Last: portStream}}, Action: dataplane.ActionAllow})
	return cfg
}

// pinnedShimCounter sums counter idx of every CPU in every shim pinned in
// dir, read from the pinned maps (no process holds them).
func pinnedShimCounter(t *testing.T, dir string, idx int) uint64 {
	t.Helper()
	ents, err := os.ReadDir(shimsDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, e := range ents {
		m, err := ebpf.LoadPinnedMap(filepath.Join(shimDir(dir, e.Name()), "counters"), nil)
		if err != nil {
			t.Fatal(err)
		}
		var v [8]uint64
		for cpu := uint32(0); cpu < m.MaxEntries(); cpu++ {
			if err := m.Lookup(cpu, &v); err != nil {
				t.Fatal(err)
			}
			sum += v[idx]
		}
		m.Close()
	}
	return sum
}

// fwPrograms returns the XDP program id on each firewall interface (0:
// none).
func fwPrograms(t *testing.T, l *netlab.Lab) [2]uint32 {
	t.Helper()
	var ids [2]uint32
	err := l.Firewall.Do(func() error {
		for i, n := range []string{l.FwClientIf, l.FwServerIf} {
			lk, err := netlink.LinkByName(n)
			if err != nil {
				return err
			}
			if x := lk.Attrs().Xdp; x != nil {
				ids[i] = x.ProgId
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

const (
	idxDropNoSocket       = 4 // enum xsk_counter in bpf/xsk_shim.c
	idxDropHeartbeatStale = 5
)

// TestIntegrationPinnedFailsClosedAfterKill: a pinned userspace dataplane
// whose process is killed with SIGKILL keeps its shims attached: no transit
// frame reaches the server, the firewall's own address still answers a
// ping, and the drops are counted in the pinned counters by reason; a new
// backend adopts the shims and forwarding resumes within 2 s of its start;
// Close leaves nothing pinned or attached.
func TestIntegrationPinnedFailsClosedAfterKill(t *testing.T) {
	e := newLabEnv(t, portStream)
	l := e.l
	dir := netlab.PinDir(t)
	cfg := streamConfig(l)
	c := startChild(t, l, dir, cfg)
	st := startStream(t, l)
	waitFor(t, "the stream forwarded by the child", 5*time.Second, func() bool { return serverCount(t, e) > 100 })
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
		t.Fatalf("allowed flow through the child: %v", err)
	}
	progs := fwPrograms(t, l)

	c.kill()
	base := serverSettled(t, e)
	sent0, stale0 := st.sent.Load(), pinnedShimCounter(t, dir, idxDropHeartbeatStale)
	// 1.5 s of the stream with no process (the heartbeat limit is 1 s):
	// nothing reaches the server, and the drops turn from "no socket" to
	// "heartbeat stale".
	const window = 1500 * time.Millisecond
	deadline := time.Now().Add(window)
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 300*time.Millisecond); err == nil {
		t.Error("an allowed UDP flow was answered with no dataplane process: the firewall failed open")
	}
	if p := dptest.Ping(l.Client, l.FwClientAddr4, 4242, 2*time.Second); p.Outcome != dptest.Answered {
		t.Errorf("ping to the firewall's own address %s with no dataplane process: %v (%v)", l.FwClientAddr4, p.Outcome, p.Err)
	}
	time.Sleep(time.Until(deadline))
	sent, got := st.sent.Load()-sent0, serverCount(t, e)-base
	t.Logf("after the kill: %d stream datagrams sent in %v, %d reached the server", sent, window, got)
	if sent < 100 {
		t.Fatalf("only %d datagrams sent in %v: the window tested nothing", sent, window)
	}
	if got != 0 {
		t.Errorf("%d transit frames reached the server with no dataplane process, want 0", got)
	}
	if now := fwPrograms(t, l); now != progs {
		t.Errorf("XDP programs after the kill %v, want the pinned shims %v", now, progs)
	}
	stale := pinnedShimCounter(t, dir, idxDropHeartbeatStale)
	noSock := pinnedShimCounter(t, dir, idxDropNoSocket)
	t.Logf("pinned shim counters: drop_heartbeat_stale %d (+%d in the window), drop_no_socket %d", stale, stale-stale0, noSock)
	if stale <= stale0 {
		t.Errorf("drop_heartbeat_stale did not rise while no process ran (%d -> %d)", stale0, stale)
	}

	// Restart: adopt, apply, forwarding resumes.
	t0 := time.Now()
	b, err := New(context.Background(), &Options{NetNS: l.Firewall.Path, PinDir: dir})
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	defer b.Close()
	adopted := time.Since(t0)
	res, err := b.Apply(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Apply after adoption: %v", err)
	}
	applied := time.Since(t0)
	before := serverCount(t, e)
	waitFor(t, "forwarding to resume", 2*time.Second-time.Since(t0), func() bool { return serverCount(t, e) > before })
	t.Logf("forwarding resumed %v after the new backend's New (New adopted in %v, Apply done at %v)", time.Since(t0).Round(time.Millisecond),
		adopted.Round(time.Millisecond), applied.Round(time.Millisecond))
	if res.Generation != 2 {
		t.Errorf("generation after adoption = %d, want 2 (continuing from 1)", res.Generation)
	}
	if v := counter(t, b, "shim_drop_heartbeat_stale"); v < stale {
		t.Errorf("the adopting process reports shim_drop_heartbeat_stale %d, want at least the pinned %d", v, stale)
	}
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
		t.Errorf("allowed flow after adoption: %v", err)
	}
	if err := udpRT(l, 0, l.ServerAddr4, portDenied, 300*time.Millisecond); err == nil {
		t.Error("denied flow passed after adoption")
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close: %s still exists (%v)", dir, err)
	}
	if now := fwPrograms(t, l); now != [2]uint32{} {
		t.Errorf("after Close: XDP programs %v, want none", now)
	}
}

// TestIntegrationPinnedAdoptRefused: a pinned dataplane of another layout
// (a version bump, as an upgrade would bring) is refused on adoption with
// an error naming the difference, and nothing running changes; a
// directory held by a live backend is refused too; Release leaves the
// shims enforcing and a compatible New adopts them.
func TestIntegrationPinnedAdoptRefused(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	dir := netlab.PinDir(t)
	ctx := context.Background()
	cfg := netlabConfig(l)
	b1, err := New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b1.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir}); !errors.Is(err, dataplane.ErrPinnedInUse) {
		t.Errorf("second New on a held pin directory: %v, want ErrPinnedInUse", err)
	} else if !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("in-use error does not name the holder (pid %d): %v", os.Getpid(), err)
	}
	if err := RemovePinned(dir); !errors.Is(err, dataplane.ErrPinnedInUse) {
		t.Errorf("RemovePinned of a held directory: %v, want ErrPinnedInUse", err)
	}
	if err := b1.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	progs := fwPrograms(t, l)
	if progs[0] == 0 || progs[1] == 0 {
		t.Fatalf("after Release: XDP programs %v, want the shims", progs)
	}

	_, err = New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir, testLayoutVersion: layoutVersion + 1})
	if !errors.Is(err, ErrIncompatiblePin) {
		t.Fatalf("adopting another layout: %v, want ErrIncompatiblePin", err)
	}
	want := fmt.Sprintf("layout version %d pinned, %d in this build", layoutVersion, layoutVersion+1)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("refusal %q does not say %q", err, want)
	}
	if now := fwPrograms(t, l); now != progs {
		t.Errorf("after the refusal: XDP programs %v, want %v unchanged", now, progs)
	}
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 300*time.Millisecond); err == nil {
		t.Error("an allowed flow passed after the refusal: the released shims stopped dropping")
	}
	if p := dptest.Ping(l.Client, l.FwClientAddr4, 4343, 2*time.Second); p.Outcome != dptest.Answered {
		t.Errorf("ping to the firewall after the refusal: %v (%v)", p.Outcome, p.Err)
	}

	b2, err := New(ctx, &Options{NetNS: l.Firewall.Path, PinDir: dir})
	if err != nil {
		t.Fatalf("adopt with this build: %v", err)
	}
	defer b2.Close()
	if _, err := b2.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := udpRT(l, 0, l.ServerAddr4, portUDP, 2*time.Second); err != nil {
		t.Errorf("allowed flow after adoption: %v", err)
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close: %s still exists (%v)", dir, err)
	}
	if now := fwPrograms(t, l); now != [2]uint32{} {
		t.Errorf("after Close: XDP programs %v, want none", now)
	}
}

// TestIntegrationPinnedTCPAfterRestart pins down what an established TCP
// connection sees when the userspace dataplane's process dies and a new
// one adopts the shims: sessions lived in the dead process, so with
// sessions.tcp_pickup off (the default) the connection's next segment is
// not a SYN and is dropped (dropped_tcp_not_syn): the connection stalls
// until its endpoints give up. With tcp_pickup on, the client's next
// segment opens an unassured established session and the connection
// carries on.
func TestIntegrationPinnedTCPAfterRestart(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	for _, pickup := range []bool{false, true} {
		t.Run(fmt.Sprintf("tcp_pickup=%v", pickup), func(t *testing.T) {
			dir := netlab.PinDir(t)
			cfg := netlabConfig(l)
			cfg.Sessions.TCPPickup = pickup
			c := startChild(t, l, dir, cfg)
			var conn net.Conn
			if err := l.Client.Do(func() error {
				var err error
				conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(l.ServerAddr4, portTCP).String(), 2*time.Second)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			echo := func(what string, d time.Duration) error {
				conn.SetDeadline(time.Now().Add(d))
				if _, err := conn.Write([]byte(what)); err != nil {
					return err
				}
				buf := make([]byte, len(what))
				if _, err := io.ReadFull(conn, buf); err != nil {
					return err
				}
				if string(buf) != what {
					return fmt.Errorf("echo %q, want %q", buf, what)
				}
				return nil
			}
			if err := echo("before", 2*time.Second); err != nil {
				t.Fatal(err)
			}
			c.kill()
			b, err := New(context.Background(), &Options{NetNS: l.Firewall.Path, PinDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if _, err := b.Apply(context.Background(), cfg); err != nil {
				t.Fatal(err)
			}
			err = echo("after", 1500*time.Millisecond)
			notSyn := counter(t, b, "dropped_tcp_not_syn")
			t.Logf("echo after the restart: %v; dropped_tcp_not_syn %d", err, notSyn)
			if pickup && err != nil {
				t.Errorf("with tcp_pickup the connection did not carry on: %v", err)
			}
			if !pickup && (err == nil || notSyn == 0) {
				t.Errorf("without tcp_pickup: echo %v, dropped_tcp_not_syn %d; want a stalled connection whose segments are dropped as not SYN (update the docs if this changed)", err, notSyn)
			}
		})
	}
}

// TestIntegrationStuckWorkerDropsAtShim: a worker that stops making
// progress (held here by the test hook) stops beating; once its heartbeat
// is older than the limit, its queue's transit frames are dropped at the
// shim and counted as shim_drop_heartbeat_stale on that interface, while
// the firewall's own address still answers. Released, it forwards again.
func TestIntegrationStuckWorkerDropsAtShim(t *testing.T) {
	e := newLabEnv(t, 0)
	l := e.l
	b := newBackend(t, e, &Options{HeartbeatLimit: 100 * time.Millisecond}, nil)
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
	t.Cleanup(func() { stall.Store(false); testHook.Store(nil) })
	stale := func() uint64 {
		v, _ := report(t, b).Counter("shim_drop_heartbeat_stale", l.FwClientIf)
		return v
	}
	before := stale()
	stall.Store(true)
	// Past the limit, every try is dropped at the shim.
	waitFor(t, "the stalled worker's frames to be dropped as stale", 5*time.Second, func() bool {
		udpRT(l, 0, l.ServerAddr4, portUDP, 50*time.Millisecond)
		return stale() > before
	})
	if p := dptest.Ping(l.Client, l.FwClientAddr4, 4646, 2*time.Second); p.Outcome != dptest.Answered {
		t.Errorf("ping to the firewall with a stuck worker: %v (%v)", p.Outcome, p.Err)
	}
	t.Logf("shim_drop_heartbeat_stale on %s: %d", l.FwClientIf, stale()-before)
	stall.Store(false)
	// A datagram sent before the worker's first beat is still dropped.
	waitFor(t, "forwarding after the worker resumed", 3*time.Second, func() bool {
		return udpRT(l, 0, l.ServerAddr4, portUDP, 200*time.Millisecond) == nil
	})
}
