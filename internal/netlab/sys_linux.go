//go:build linux

package netlab

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/ethtool"
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

// setGRO turns generic receive offload on or off (vishvananda/netlink
// cannot set device features: internal/ethtool). On a veth, GRO on gives
// the receiving side a NAPI instance, which frames redirected into the
// veth by XDP need: without it the kernel drops them silently.
// Call it inside NS.Do of the interface's namespace.
func setGRO(iface string, on bool) error {
	if err := ethtool.SetFeature(iface, unix.ETHTOOL_SGRO, on); err != nil {
		return fmt.Errorf("set GRO: %w", err)
	}
	// The kernel may silently refuse a feature: read it back.
	got, err := ethtool.Feature(iface, unix.ETHTOOL_GGRO)
	if err != nil {
		return fmt.Errorf("get GRO: %w", err)
	}
	if got != on {
		return fmt.Errorf("set GRO on %s: kernel kept it %v: %w", iface, got, unix.EOPNOTSUPP)
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
	if err := ethtool.SetFeature(iface, unix.ETHTOOL_STXCSUM, on); err != nil {
		return fmt.Errorf("set tx checksum offload: %w", err)
	}
	return nil
}
