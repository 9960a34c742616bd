package ebpfbackend

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/internal/testutil"
)

// fibLab is a private namespace with two veth pairs, addresses,
// forwarding on and permanent neighbours, so bpf_fib_lookup inside
// BPF_PROG_TEST_RUN answers like a real router. No packet leaves it: test
// runs never transmit.
type fibLab struct {
	runOn        bool // run test programs on the calling, CPU-pinned thread
	path         string
	in, out      string // interface names
	inIdx        int
	outIdx       int
	inMAC        net.HardwareAddr
	outMAC       net.HardwareAddr
	clientMAC    net.HardwareAddr // neighbour on "in"
	serverMAC    net.HardwareAddr // neighbour on "out"
	client4      netip.Addr       // 10.1.0.5, neighbour on in
	server4      netip.Addr       // 10.2.0.2, neighbour on out
	noNeigh4     netip.Addr       // 10.2.0.3, routed, no neighbour
	fw4          netip.Addr       // 10.1.0.1, the firewall itself
	unreachable4 netip.Addr       // in an "unreachable" route
	client6      netip.Addr
	server6      netip.Addr
}

func randSuffix(t testing.TB) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newNamedNS creates a named network namespace and removes it on cleanup;
// a later test run sweeps it if this process dies first.
func newNamedNS(t testing.TB) string {
	t.Helper()
	return netlab.NewNST(t, "ebpf").Path
}

func writeSysctl(name, val string) error {
	return os.WriteFile("/proc/sys/"+name, []byte(val), 0o644)
}

func newFIBLab(t *testing.T) *fibLab {
	t.Helper()
	testutil.Privileged(t, testutil.NeedBPF, testutil.NeedNetNS)
	l := &fibLab{
		path: newNamedNS(t), in: "fwin0", out: "fwout0",
		clientMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x01, 0x05},
		serverMAC: net.HardwareAddr{0x02, 0, 0, 0, 0x02, 0x02},
		client4:   netip.MustParseAddr("10.1.0.5"), server4: netip.MustParseAddr("10.2.0.2"),
		noNeigh4: netip.MustParseAddr("10.2.0.3"), fw4: netip.MustParseAddr("10.1.0.1"),
		unreachable4: netip.MustParseAddr("10.9.0.1"),
		client6:      netip.MustParseAddr("fd01::5"), server6: netip.MustParseAddr("fd02::2"),
	}
	err := netnsutil.Do(l.path, func() error {
		for _, s := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
			if err := writeSysctl(s, "1"); err != nil {
				return err
			}
		}
		type side struct {
			name     string
			a4, a6   string
			n4, n6   string
			mac      net.HardwareAddr
			idx      *int
			localMAC *net.HardwareAddr
		}
		for _, s := range []side{
			{l.in, "10.1.0.1/24", "fd01::1/64", "10.1.0.5", "fd01::5", l.clientMAC, &l.inIdx, &l.inMAC},
			{l.out, "10.2.0.1/24", "fd02::1/64", "10.2.0.2", "fd02::2", l.serverMAC, &l.outIdx, &l.outMAC},
		} {
			// veth rather than dummy: always built in, and it takes native XDP.
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.name}, PeerName: s.name + "p"}); err != nil {
				return fmt.Errorf("add %s: %w", s.name, err)
			}
			lk, err := netlink.LinkByName(s.name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(lk); err != nil {
				return err
			}
			if peer, err := netlink.LinkByName(s.name + "p"); err != nil {
				return err
			} else if err := netlink.LinkSetUp(peer); err != nil {
				return err
			}
			// The peers as netlab makes them: GRO on (NAPI, so frames XDP
			// redirects into our ends arrive) and complete checksums.
			if err := setGRO(s.name+"p", true); err != nil {
				return err
			}
			if err := disableTxChecksum(s.name + "p"); err != nil {
				return err
			}
			for _, a := range []string{s.a4, s.a6} {
				addr, _ := netlink.ParseAddr(a)
				addr.Flags = 0x80 // IFA_F_NODAD: usable at once
				if err := netlink.AddrAdd(lk, addr); err != nil {
					return fmt.Errorf("addr %s: %w", a, err)
				}
			}
			for _, n := range []string{s.n4, s.n6} {
				ip := net.ParseIP(n)
				fam := netlink.FAMILY_V4
				if ip.To4() == nil {
					fam = netlink.FAMILY_V6
				}
				if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: lk.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT, IP: ip, HardwareAddr: s.mac}); err != nil {
					return fmt.Errorf("neigh %s: %w", n, err)
				}
			}
			*s.idx = lk.Attrs().Index
			*s.localMAC = lk.Attrs().HardwareAddr
		}
		_, dst, _ := net.ParseCIDR("10.9.0.0/16")
		return netlink.RouteAdd(&netlink.Route{Dst: dst, Type: 7 /* RTN_UNREACHABLE */})
	})
	if err != nil {
		t.Fatalf("build FIB lab: %v", err)
	}
	return l
}

// xdpMD mirrors struct xdp_md for BPF_PROG_TEST_RUN's context.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run executes prog once on frame as if it arrived on ifindex, inside the
// lab namespace (the kernel resolves the ifindex there). It returns the
// XDP action and the frame as the program left it.
func (l *fibLab) run(t testing.TB, prog *ebpf.Program, ifindex int, frame []byte) (uint32, []byte) {
	t.Helper()
	var ret uint32
	out := make([]byte, len(frame)+256)
	var outLen int
	err := l.do(func() error {
		ctx := xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}
		opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: ctx}
		r, err := prog.Run(opts)
		ret = r
		outLen = len(opts.DataOut)
		return err
	})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return ret, out[:outLen]
}

// do runs fn in the lab's namespace: on a thread of its own, or, with
// runOn set, on the calling (locked) thread, which a test has pinned to a
// CPU.
func (l *fibLab) do(fn func() error) error {
	if !l.runOn {
		return netnsutil.Do(l.path, fn)
	}
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromPath(l.path)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer netns.Set(orig)
	return fn()
}

// skbCtx is the head of struct __sk_buff, up to the fields
// BPF_PROG_TEST_RUN lets a caller set for a TC program (the ingress and
// current device); the rest stays zero.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto uint32
	Priority, IngressIfindex, Ifindex, TCIndex                                  uint32
}

// tcToXDP maps TC verdicts to the XDP actions the tables expect.
var tcToXDP = map[uint32]uint32{0 /* TC_ACT_OK */ : xdpPass, 2 /* TC_ACT_SHOT */ : xdpDrop, 7 /* TC_ACT_REDIRECT */ : xdpRedirect}

// runAny runs the XDP program, or the TC program with the frame as an skb
// that arrived on ifindex, and returns the verdict as an XDP action.
func (l *fibLab) runAny(t testing.TB, prog *ebpf.Program, tc bool, ifindex int, frame []byte) (uint32, []byte) {
	t.Helper()
	if !tc {
		return l.run(t, prog, ifindex, frame)
	}
	var ret uint32
	out := make([]byte, len(frame)+256)
	var outLen int
	err := l.do(func() error {
		ctx := skbCtx{IngressIfindex: uint32(ifindex), Ifindex: uint32(ifindex)}
		opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: ctx}
		r, err := prog.Run(opts)
		ret = r
		outLen = len(opts.DataOut)
		return err
	})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	act, ok := tcToXDP[ret]
	if !ok {
		t.Fatalf("TC verdict %d", ret)
	}
	return act, out[:outLen]
}

// ethtoolValue and ifreqData are struct ethtool_value and struct ifreq with
// ifr_data, for the legacy ethtool ioctl.
type ethtoolValue struct{ cmd, data uint32 }

type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [40 - unix.IFNAMSIZ - 8]byte
}

// setGRO turns generic receive offload on or off on a veth end. Run inside
// the interface's namespace.
func setGRO(iface string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	v := ethtoolValue{cmd: unix.ETHTOOL_SGRO}
	if on {
		v.data = 1
	}
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], iface)
	ifr.data = unsafe.Pointer(&v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&v)
	if errno != 0 {
		return fmt.Errorf("set GRO on %s: %w", iface, errno)
	}
	return nil
}

// disableTxChecksum turns TX checksum offload off on a veth end. Sockets on
// a veth leave L4 checksums to "hardware" (CHECKSUM_PARTIAL); XDP sees the
// raw bytes and a frame it redirects leaves with the partial sum, which the
// receiver drops. Real NICs finish the sum when they transmit; on a veth lab
// the senders must compute it themselves. Run inside the interface's
// namespace.
func disableTxChecksum(iface string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	v := ethtoolValue{cmd: unix.ETHTOOL_STXCSUM}
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], iface)
	ifr.data = unsafe.Pointer(&v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&v)
	if errno != 0 {
		return fmt.Errorf("disable tx checksum offload on %s: %w", iface, errno)
	}
	return nil
}
