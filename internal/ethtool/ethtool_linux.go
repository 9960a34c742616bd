//go:build linux

package ethtool

import (
	"bytes"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl commands and the statistics string set (linux/ethtool.h) that
// x/sys/unix does not name.
const (
	cmdGStrings = 0x1b
	cmdGStats   = 0x1d
	cmdGSSInfo  = 0x37
	ssStats     = 1
	gstringLen  = 32
)

// ifreq is struct ifreq with the ifr_data member, padded to the kernel's
// 40 bytes.
type ifreq struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [40 - unix.IFNAMSIZ - 8]byte
}

// value is struct ethtool_value.
type value struct {
	cmd  uint32
	data uint32
}

func ioctl(iface string, data unsafe.Pointer) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	var ifr ifreq
	copy(ifr.name[:unix.IFNAMSIZ-1], iface)
	ifr.data = data
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&ifr)
	if errno != 0 {
		return errno
	}
	return nil
}

// Stats returns iface's driver statistics (what `ethtool -S` prints) by
// name; a driver without any returns an empty map.
func Stats(iface string) (map[string]uint64, error) {
	// struct ethtool_sset_info with room for one count.
	info := struct {
		cmd, reserved uint32
		mask          uint64
		n             uint32
	}{cmd: cmdGSSInfo, mask: 1 << ssStats}
	if err := ioctl(iface, unsafe.Pointer(&info)); err != nil {
		return nil, fmt.Errorf("count statistics of %s: %w", iface, err)
	}
	out := map[string]uint64{}
	if info.mask&(1<<ssStats) == 0 || info.n == 0 {
		return out, nil
	}
	n := int(info.n)
	// struct ethtool_gstrings: cmd, string_set, len, then the names.
	strs := make([]byte, 12+n*gstringLen)
	*(*[3]uint32)(unsafe.Pointer(&strs[0])) = [3]uint32{cmdGStrings, ssStats, uint32(n)}
	if err := ioctl(iface, unsafe.Pointer(&strs[0])); err != nil {
		return nil, fmt.Errorf("read statistics names of %s: %w", iface, err)
	}
	// struct ethtool_stats: cmd, n_stats, then the values (the first
	// uint64 holds both header words).
	vals := make([]uint64, 1+n)
	*(*[2]uint32)(unsafe.Pointer(&vals[0])) = [2]uint32{cmdGStats, uint32(n)}
	if err := ioctl(iface, unsafe.Pointer(&vals[0])); err != nil {
		return nil, fmt.Errorf("read statistics of %s: %w", iface, err)
	}
	for i := range n {
		name := string(bytes.TrimRight(strs[12+i*gstringLen:12+(i+1)*gstringLen], "\x00"))
		out[name] = vals[1+i]
	}
	return out, nil
}

// Feature reads a feature with its legacy get command, e.g.
// unix.ETHTOOL_GGRO, unix.ETHTOOL_GTXCSUM, unix.ETHTOOL_GTSO.
func Feature(iface string, get uint32) (bool, error) {
	v := value{cmd: get}
	if err := ioctl(iface, unsafe.Pointer(&v)); err != nil {
		return false, fmt.Errorf("read feature %#x of %s: %w", get, iface, err)
	}
	return v.data != 0, nil
}

// SetFeature turns a feature on or off with its legacy set command, e.g.
// unix.ETHTOOL_SGRO, unix.ETHTOOL_STXCSUM. The kernel may refuse a feature
// silently: read it back with Feature where that matters.
func SetFeature(iface string, set uint32, on bool) error {
	v := value{cmd: set}
	if on {
		v.data = 1
	}
	if err := ioctl(iface, unsafe.Pointer(&v)); err != nil {
		return fmt.Errorf("set feature %#x of %s to %v: %w", set, iface, on, err)
	}
	return nil
}
