package ebpfbackend

import (
	"bytes"
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtool ioctl commands and the string set of driver statistics
// (linux/ethtool.h).
const (
	ethtoolGStrings = 0x1b
	ethtoolGStats   = 0x1d
	ethtoolGSSInfo  = 0x37
	ethSSStats      = 1
	ethGStringLen   = 32
)

// ethtoolReq is struct ifreq with ifr_data set.
type ethtoolReq struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte
}

func ethtoolIoctl(fd int, name string, data unsafe.Pointer) error {
	var r ethtoolReq
	copy(r.name[:], name)
	r.data = uintptr(data)
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&r)))
	if e != 0 {
		return e
	}
	return nil
}

// xdpXmitErrors sums a device's driver statistics that count frames its
// ndo_xdp_xmit refused (a full ring, a frame too big). Drivers name them
// differently; veth's are tx_queue_<n>_xdp_xmit_errors. ok is false when
// the driver exposes none. Must run in the device's namespace.
func xdpXmitErrors(name string) (sum uint64, ok bool, err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, false, fmt.Errorf("open ethtool socket: %w", err)
	}
	defer unix.Close(fd)

	// struct ethtool_sset_info with room for one count.
	info := struct {
		cmd, reserved uint32
		mask          uint64
		n             uint32
	}{cmd: ethtoolGSSInfo, mask: 1 << ethSSStats}
	if err := ethtoolIoctl(fd, name, unsafe.Pointer(&info)); err != nil {
		return 0, false, fmt.Errorf("read %s statistics count: %w", name, err)
	}
	if info.mask&(1<<ethSSStats) == 0 || info.n == 0 {
		return 0, false, nil
	}
	n := int(info.n)

	strs := make([]byte, 12+n*ethGStringLen)
	*(*[3]uint32)(unsafe.Pointer(&strs[0])) = [3]uint32{ethtoolGStrings, ethSSStats, uint32(n)}
	if err := ethtoolIoctl(fd, name, unsafe.Pointer(&strs[0])); err != nil {
		return 0, false, fmt.Errorf("read %s statistics names: %w", name, err)
	}
	stats := make([]uint64, 1+n)
	*(*[2]uint32)(unsafe.Pointer(&stats[0])) = [2]uint32{ethtoolGStats, uint32(n)}
	if err := ethtoolIoctl(fd, name, unsafe.Pointer(&stats[0])); err != nil {
		return 0, false, fmt.Errorf("read %s statistics: %w", name, err)
	}
	for i := range n {
		raw := strs[12+i*ethGStringLen : 12+(i+1)*ethGStringLen]
		s := string(bytes.TrimRight(raw, "\x00"))
		if strings.HasSuffix(s, "xdp_xmit_errors") || strings.HasSuffix(s, "xdp_xmit_err") {
			sum += stats[1+i]
			ok = true
		}
	}
	return sum, ok, nil
}
