//go:build linux

package netlab

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setSysctl writes a sysctl of the calling thread's network namespace (the
// /proc/sys/net tree is per namespace, resolved at open): call it inside
// NS.Do.
func setSysctl(name, value string) error {
	p := filepath.Join("/proc/sys", filepath.FromSlash(name))
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with the ifr_data member, padded to the
// kernel's 40 bytes.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [40 - unix.IFNAMSIZ - 8]byte
}

// setGRO turns generic receive offload on or off with the legacy ethtool
// ioctl (vishvananda/netlink cannot set device features). On a veth, GRO on
// gives the receiving side a NAPI instance, which frames redirected into
// the veth by XDP need: without it the kernel drops them silently.
// Call it inside NS.Do of the interface's namespace.
func setGRO(iface string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	v := ethtoolValue{cmd: unix.ETHTOOL_SGRO}
	if on {
		v.data = 1
	}
	if err := ethtoolIoctl(fd, iface, &v); err != nil {
		return fmt.Errorf("set GRO on %s: %w", iface, err)
	}
	// The kernel may silently refuse a feature: read it back.
	v = ethtoolValue{cmd: unix.ETHTOOL_GGRO}
	if err := ethtoolIoctl(fd, iface, &v); err != nil {
		return fmt.Errorf("get GRO of %s: %w", iface, err)
	}
	if (v.data != 0) != on {
		return fmt.Errorf("set GRO on %s: kernel kept it %v: %w", iface, v.data != 0, unix.EOPNOTSUPP)
	}
	return nil
}

// setTxChecksum turns TX checksum offload on or off. Sockets on a veth leave
// L4 checksums to "hardware" (CHECKSUM_PARTIAL); an XDP program sees the raw
// bytes, and a frame it redirects leaves with the partial sum, which the
// receiver drops. Real NICs finish the sum when they transmit; on a veth lab
// the senders must compute it themselves, so the lab turns it off on every
// end. Call it inside NS.Do of the interface's namespace.
func setTxChecksum(iface string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	v := ethtoolValue{cmd: unix.ETHTOOL_STXCSUM}
	if on {
		v.data = 1
	}
	if err := ethtoolIoctl(fd, iface, &v); err != nil {
		return fmt.Errorf("set tx checksum offload on %s: %w", iface, err)
	}
	return nil
}

func ethtoolIoctl(fd int, iface string, v *ethtoolValue) error {
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], iface)
	ifr.data = unsafe.Pointer(v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(v)
	if errno != 0 {
		return errno
	}
	return nil
}
