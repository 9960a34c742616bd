package capability

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/mapcount"
	"github.com/fwplane/fwplane/internal/netnsutil"
)

// ProbeOptions selects what ProbeHost looks at. Nil means host probes only.
type ProbeOptions struct {
	// NetNS is the path of the network namespace holding Interfaces;
	// "" = the current one.
	NetNS string
	// Interfaces to ask the kernel about (XDP features).
	Interfaces []string
}

var probes = []struct {
	name ProbeName
	fn   func() error
}{
	{ProbeBPFSyscall, probeBPFSyscall},
	{ProbeXDPProgram, func() error { return features.HaveProgramType(ebpf.XDP) }},
	{ProbeFIBLookup, func() error { return features.HaveProgramHelper(ebpf.XDP, asm.FnFibLookup) }},
	{ProbeDevMap, func() error { return features.HaveMapType(ebpf.DevMap) }},
	{ProbeLRUHash, func() error { return features.HaveMapType(ebpf.LRUHash) }},
	// The eBPF backend's session sweep is a bpf_timer armed by an XDP
	// program: expiry in the kernel, with or without a process.
	{ProbeBPFTimer, func() error { return features.HaveProgramHelper(ebpf.XDP, asm.FnTimerInit) }},
	{ProbeBatchOps, probeBatchOps},
	{ProbeMapIterKfunc, probeMapIterKfunc},
	{ProbeXSKMap, func() error { return features.HaveMapType(ebpf.XSKMap) }},
	{ProbeAFXDPSocket, probeAFXDPSocket},
	{ProbeXDPLink, probeXDPLink},
	{ProbeLiveFrameTest, probeLiveFrames},
	{ProbeTCX, probeTCX},
}

var (
	cacheMu sync.Mutex
	cache   = map[ProbeName]*cachedProbe{}
)

type cachedProbe struct {
	once sync.Once
	err  error
}

// Probe runs one probe, once per process, and returns its raw error by the
// cilium/ebpf contract (nil, ErrNotSupported-wrapping, or inconclusive).
func Probe(name ProbeName) error {
	var fn func() error
	for _, p := range probes {
		if p.name == name {
			fn = p.fn
		}
	}
	if fn == nil {
		return fmt.Errorf("probe %s: unknown probe", name)
	}
	cacheMu.Lock()
	c, ok := cache[name]
	if !ok {
		c = &cachedProbe{}
		cache[name] = c
	}
	cacheMu.Unlock()
	c.once.Do(func() { c.err = ExplainPermission(fn()) })
	return c.err
}

// ProbeHost runs every host probe (cached) and, for opts.Interfaces, asks
// the kernel what XDP features each interface advertises. It fails only if
// ctx is done; individual probe failures are results, not errors.
func ProbeHost(ctx context.Context, opts *ProbeOptions) (*Host, error) {
	if opts == nil {
		opts = &ProbeOptions{}
	}
	// Kernels before 5.11 account BPF memory to RLIMIT_MEMLOCK.
	_ = rlimit.RemoveMemlock()
	h := &Host{Kernel: kernelRelease(), Probes: map[ProbeName]Result{}, MemoryBytes: hostMemory()}
	for _, p := range probes {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("probe host: %w", err)
		}
		h.Probes[p.name] = ResultOf(p.name, Probe(p.name))
	}
	if len(opts.Interfaces) > 0 {
		ifs, err := ProbeInterfaces(opts.NetNS, opts.Interfaces)
		if err != nil {
			return nil, err
		}
		h.Interfaces = ifs
	}
	return h, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func probeBPFSyscall() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("bpf syscall: %w", ErrNotSupported)
	}
	if err != nil {
		return fmt.Errorf("create array map: %w", err)
	}
	return m.Close()
}

func probeBatchOps() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 4})
	if err != nil {
		return fmt.Errorf("create hash map: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(1), uint32(1)); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	keys := make([]uint32, 4)
	vals := make([]uint32, 4)
	var cursor ebpf.MapBatchCursor
	n, err := m.BatchLookup(&cursor, keys, vals, nil)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil // end of map: the call itself worked
	}
	if err != nil {
		return fmt.Errorf("batch lookup: %w", err)
	}
	if n != 1 {
		return fmt.Errorf("batch lookup returned %d entries, want 1", n)
	}
	return nil
}

func probeMapIterKfunc() error {
	k, err := mapcount.NewKfunc()
	if err != nil {
		return err
	}
	return k.Close()
}

func probeAFXDPSocket() error {
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("AF_XDP socket: %w", ErrNotSupported)
	}
	if err != nil {
		return fmt.Errorf("AF_XDP socket: %w", err)
	}
	return unix.Close(fd)
}

func xdpPassProgram(name string) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 2 /* XDP_PASS */, asm.DWord), asm.Return()},
	})
}

// probeXDPLink attaches an XDP program through a bpf_link to the loopback
// device of a throwaway network namespace, so no real interface is touched.
func probeXDPLink() error {
	prog, err := xdpPassProgram("probe_xdp_link")
	if err != nil {
		return fmt.Errorf("load XDP program: %w", err)
	}
	defer prog.Close()
	return inScratchNetns(func(lo int) error {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: lo, Flags: link.XDPGenericMode})
		if err != nil {
			return fmt.Errorf("attach XDP through bpf_link: %w", err)
		}
		return l.Close()
	})
}

// probeTCX attaches a pass-through TC program to a scratch namespace's
// loopback with a tcx link (kernel 6.6+), the eBPF backend's TC mode.
func probeTCX() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "probe_tcx", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 0, asm.DWord), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load TC program: %w", err)
	}
	defer prog.Close()
	return inScratchNetns(func(lo int) error {
		l, err := link.AttachTCX(link.TCXOptions{Interface: lo, Program: prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach TC program through a tcx link: %w", err)
		}
		return l.Close()
	})
}

// inScratchNetns runs fn with the loopback ifindex of a new, private
// network namespace that disappears afterwards, so a probe that attaches
// something never touches a real interface.
func inScratchNetns(fn func(lo int) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		tmp, err := netns.New() // switches this thread into it
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("create probe netns: %w", err)
			return
		}
		err = func() error {
			defer tmp.Close()
			lo, err := net.InterfaceByName("lo")
			if err != nil {
				return err
			}
			return fn(lo.Index)
		}()
		if rerr := netns.Set(orig); rerr != nil {
			errc <- fmt.Errorf("restore netns: %w", rerr) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// probeLiveFrames runs an XDP_DROP program with BPF_F_TEST_XDP_LIVE_FRAMES
// on loopback: nothing is transmitted.
func probeLiveFrames() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "probe_live", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 1 /* XDP_DROP */, asm.DWord), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load XDP program: %w", err)
	}
	defer prog.Close()
	_, err = prog.Run(&ebpf.RunOptions{
		Data:    make([]byte, 64),
		Repeat:  1,
		Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		Context: []byte(nil),
	})
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("live frames test run: %w", ErrNotSupported)
	}
	if err != nil {
		return fmt.Errorf("live frames test run: %w", err)
	}
	return nil
}

// XDP feature bits of the netdev netlink family (enum netdev_xdp_act).
var xdpFeatureNames = []string{"basic", "redirect", "ndo-xmit", "xsk-zerocopy", "hw-offload", "rx-sg", "ndo-xmit-sg"}

const (
	netdevCmdDevGet      = 1
	netdevAttrIfindex    = 1
	netdevAttrXDPFeature = 3
)

// ProbeInterfaces reads what the attach decision needs of each named
// interface in the network namespace at netns ("" = the current one). An
// interface that does not exist comes back with Exists unset.
func ProbeInterfaces(netns string, names []string) (map[string]InterfaceCaps, error) {
	out := make(map[string]InterfaceCaps, len(names))
	err := netnsutil.Do(netns, func() error {
		for _, name := range names {
			out[name] = probeInterface(name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("probe interfaces: %w", err)
	}
	return out, nil
}

// probeInterface runs on a thread locked into the interface's namespace.
func probeInterface(name string) InterfaceCaps {
	caps := InterfaceCaps{Name: name}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return caps
	}
	caps.Exists = true
	caps.Ifindex = l.Attrs().Index
	caps.MTU = l.Attrs().MTU
	caps.Kind = l.Type()
	if caps.Kind == "" {
		caps.Kind = "device"
	}
	caps.Driver, _ = ethtoolDriver(name)
	if caps.Kind == "veth" {
		caps.Peer, err = vethPeer(l)
		if err != nil {
			caps.PeerErr = err.Error()
		}
	}
	caps.RXQueues = l.Attrs().NumRxQueues
	feats, err := xdpFeatures(caps.Ifindex)
	if err != nil {
		caps.FeaturesErr = err.Error()
		return caps
	}
	caps.Features = feats
	return caps
}

// genlHeader is struct genlmsghdr: command, version, 16 reserved bits that
// must be zero. vishvananda/netlink's nl.Genlmsg serialises 4 bytes out of a
// 2-byte struct, so its reserved bits are whatever follows in memory, and
// strictly validated families (netdev) then fail with EINVAL at random.
type genlHeader [4]byte

func (h *genlHeader) Len() int          { return len(h) }
func (h *genlHeader) Serialize() []byte { return h[:] }

// xdpFeatures asks the netdev generic netlink family (kernel 6.3+) which XDP
// features the driver advertises.
func xdpFeatures(ifindex int) ([]string, error) {
	fam, err := netlink.GenlFamilyGet("netdev")
	if err != nil {
		return nil, fmt.Errorf("netdev netlink family (kernel >= 6.3): %w", err)
	}
	req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_REQUEST)
	req.AddData(&genlHeader{netdevCmdDevGet, 1, 0, 0})
	idx := make([]byte, 4)
	binary.NativeEndian.PutUint32(idx, uint32(ifindex))
	req.AddData(nl.NewRtAttr(netdevAttrIfindex, idx))
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, fmt.Errorf("netdev dev-get: %w", err)
	}
	for _, m := range msgs {
		if len(m) < nl.SizeofGenlmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
		if err != nil {
			return nil, fmt.Errorf("parse dev-get reply: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type != netdevAttrXDPFeature || len(a.Value) < 8 {
				continue
			}
			bits := binary.NativeEndian.Uint64(a.Value)
			out := []string{}
			for i, n := range xdpFeatureNames {
				if bits&(1<<i) != 0 {
					out = append(out, n)
				}
			}
			return out, nil
		}
	}
	return nil, errors.New("netdev dev-get: no xdp-features attribute")
}

// Linux capability numbers (linux/capability.h).
const (
	capNetAdmin    = 12
	capNetRaw      = 13
	capSysAdmin    = 21
	capSysResource = 24
	capPerfmon     = 38
	capBPF         = 39
)

var capNames = map[int]string{capNetAdmin: "CAP_NET_ADMIN", capNetRaw: "CAP_NET_RAW", capSysAdmin: "CAP_SYS_ADMIN",
	capSysResource: "CAP_SYS_RESOURCE", capPerfmon: "CAP_PERFMON", capBPF: "CAP_BPF"}

// effectiveCaps reads the effective capability set of this process.
func effectiveCaps() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// MissingCapabilities names the capabilities fwplane needs that this
// process lacks: CAP_BPF (or CAP_SYS_ADMIN) to load programs, CAP_NET_ADMIN
// to attach XDP, CAP_NET_RAW for AF_XDP sockets, CAP_PERFMON for programs
// that read kernel memory (iterators).
func MissingCapabilities() []string {
	eff, err := effectiveCaps()
	if err != nil {
		return nil
	}
	has := func(c int) bool { return eff&(1<<c) != 0 }
	var missing []string
	if !has(capBPF) && !has(capSysAdmin) {
		missing = append(missing, capNames[capBPF])
	}
	for _, c := range []int{capNetAdmin, capNetRaw} {
		if !has(c) {
			missing = append(missing, capNames[c])
		}
	}
	if !has(capPerfmon) && !has(capSysAdmin) {
		missing = append(missing, capNames[capPerfmon])
	}
	return missing
}

// ExplainPermission adds the capabilities this process lacks to a
// permission error (EPERM/EACCES), keeping the errno matchable; other errors
// pass through unchanged. A probe failing this way stays inconclusive: the
// feature may well exist.
func ExplainPermission(err error) error {
	if err == nil || !(errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)) {
		return err
	}
	if m := MissingCapabilities(); len(m) > 0 {
		return fmt.Errorf("%w (process lacks %s)", err, strings.Join(m, ", "))
	}
	return err
}
