package userspacebackend

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtoolChannels is struct ethtool_channels.
type ethtoolChannels struct {
	cmd                                         uint32
	maxRX, maxTX, maxOther, maxCombined         uint32
	rxCount, txCount, otherCount, combinedCount uint32
}

type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [40 - unix.IFNAMSIZ - 8]byte
}

// rxQueues returns how many RX queues an AF_XDP socket can bind on iface:
// the driver's active channels (ETHTOOL_GCHANNELS), which can be fewer
// than the queues the device was allocated (IFLA_NUM_RX_QUEUES; a veth
// allocates one per CPU and activates one). fallback is returned when the
// driver does not report channels. Run in the interface's namespace.
func rxQueues(iface string, fallback int) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fallback
	}
	defer unix.Close(fd)
	ch := ethtoolChannels{cmd: unix.ETHTOOL_GCHANNELS}
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], iface)
	ifr.data = unsafe.Pointer(&ch)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&ch)
	if errno != 0 {
		return fallback
	}
	if n := int(ch.rxCount + ch.combinedCount); n > 0 {
		return n
	}
	return fallback
}
