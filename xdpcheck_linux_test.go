package fwplane

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// checkNoXDP fails if any of the interfaces (in the current namespace) has
// an XDP program attached.
func checkNoXDP(ifaces ...string) error {
	for _, name := range ifaces {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && (x.Attached || x.ProgId != 0) {
			return fmt.Errorf("%s still has XDP program %d attached", name, x.ProgId)
		}
	}
	return nil
}
