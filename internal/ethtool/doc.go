// Package ethtool reads a network device's driver statistics and reads or
// sets its offload features with the legacy SIOCETHTOOL ioctl, through
// golang.org/x/sys/unix: vishvananda/netlink reads only the standard link
// statistics and cannot set device features, and the ethtool
// generic-netlink family carries only the standard statistics groups, not
// a driver's own counters (such as veth's per-queue XDP drops).
//
// Every function acts in the calling thread's network namespace: call it
// on a thread switched into the device's namespace (internal/netnsutil).
// Errors wrap the ioctl's errno with %w. The functions are safe for
// concurrent use.
package ethtool
