package capability

import "golang.org/x/sys/unix"

// hostMemory is the host's RAM in bytes (sysinfo), 0 when unknown.
func hostMemory() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit)
}
