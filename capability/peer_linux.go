package capability

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ethtool commands this file uses (linux/ethtool.h). vishvananda/netlink
// has no ethtool feature reads, so they are ioctls on x/sys/unix.
const (
	ethtoolGDrvInfo = 0x03
	ethtoolGTXCsum  = 0x16
	ethtoolGTSO     = 0x1e
	ethtoolGGRO     = 0x2b
)

// ethtoolIfreq is struct ifreq with ifr_data, padded to 40 bytes.
type ethtoolIfreq struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [40 - unix.IFNAMSIZ - 8]byte
}

func ethtoolCall(name string, data unsafe.Pointer) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	var r ethtoolIfreq
	copy(r.name[:unix.IFNAMSIZ-1], name)
	r.data = data
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&r)))
	runtime.KeepAlive(data)
	if e != 0 {
		return e
	}
	return nil
}

// ethtoolDriver returns the driver name (ETHTOOL_GDRVINFO).
func ethtoolDriver(name string) (string, error) {
	var info struct {
		cmd    uint32
		driver [32]byte
		rest   [32*4 + 12 + 5*4]byte
	}
	info.cmd = ethtoolGDrvInfo
	if err := ethtoolCall(name, unsafe.Pointer(&info)); err != nil {
		return "", fmt.Errorf("ethtool driver info of %s: %w", name, err)
	}
	return string(bytes.TrimRight(info.driver[:], "\x00")), nil
}

// ethtoolFlag reads one legacy on/off feature (struct ethtool_value).
func ethtoolFlag(name string, cmd uint32) (bool, error) {
	v := struct{ cmd, data uint32 }{cmd: cmd}
	if err := ethtoolCall(name, unsafe.Pointer(&v)); err != nil {
		return false, err
	}
	return v.data != 0, nil
}

// vethPeer reads the other end of veth l, which may live in another
// network namespace: the link names its peer's ifindex and the peer's
// namespace id (relative to ours); the namespace is found among the named
// ones (/run/netns, as `ip netns add` makes them) and those of running
// processes, entered on this (locked) thread, read and left.
func vethPeer(l netlink.Link) (*PeerCaps, error) {
	idx := l.Attrs().ParentIndex // IFLA_LINK: the peer's ifindex
	if idx <= 0 {
		var err error
		if idx, err = netlink.VethPeerIndex(&netlink.Veth{LinkAttrs: *l.Attrs()}); err != nil || idx <= 0 {
			return nil, fmt.Errorf("veth peer index: %v", err)
		}
	}
	nsid := l.Attrs().NetNsID
	if nsid < 0 {
		return readPeer(idx)
	}
	target, err := netnsByID(nsid)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		return nil, fmt.Errorf("enter the peer's netns (id %d): %w", nsid, err)
	}
	p, perr := readPeer(idx)
	if err := netns.Set(orig); err != nil {
		// The caller's thread is locked (netnsutil.Do) and poisoned now:
		// panic rather than probe on in a foreign namespace.
		panic(fmt.Sprintf("restore netns after reading a veth peer: %v", err))
	}
	return p, perr
}

func readPeer(ifindex int) (*PeerCaps, error) {
	pl, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("peer link %d: %w", ifindex, err)
	}
	a := pl.Attrs()
	p := &PeerCaps{Name: a.Name, Ifindex: a.Index, MTU: a.MTU, XDP: a.Xdp != nil && a.Xdp.Attached}
	var errs []error
	var e error
	if p.TXChecksum, e = ethtoolFlag(a.Name, ethtoolGTXCsum); e != nil {
		errs = append(errs, fmt.Errorf("TX checksum offload of %s: %w", a.Name, e))
	}
	if p.GRO, e = ethtoolFlag(a.Name, ethtoolGGRO); e != nil {
		errs = append(errs, fmt.Errorf("GRO of %s: %w", a.Name, e))
	}
	if p.TSO, e = ethtoolFlag(a.Name, ethtoolGTSO); e != nil {
		errs = append(errs, fmt.Errorf("TSO of %s: %w", a.Name, e))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// netnsByID finds the network namespace that has id nsid in ours.
func netnsByID(nsid int) (netns.NsHandle, error) {
	seen := map[uint64]bool{}
	try := func(path string) (netns.NsHandle, bool) {
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil || seen[st.Ino] {
			return netns.None(), false
		}
		seen[st.Ino] = true
		h, err := netns.GetFromPath(path)
		if err != nil {
			return netns.None(), false
		}
		if id, err := netlink.GetNetNsIdByFd(int(h)); err == nil && id == nsid {
			return h, true
		}
		h.Close()
		return netns.None(), false
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if h, ok := try(filepath.Join(dir, e.Name())); ok {
				return h, nil
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		if h, ok := try(p); ok {
			return h, nil
		}
	}
	return netns.None(), fmt.Errorf("the veth peer's network namespace (id %d) is neither named nor held by a process this one can see", nsid)
}
