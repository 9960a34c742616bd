package userspacebackend

import (
	"context"
	"errors"
	"net/netip"

	"github.com/fwplane/fwplane/userspacebackend/internal/route"
)

// errNoRoute and errLocalRoute are what a route lookup answers besides an
// egress: no usable unicast route, or an address of the firewall itself
// (the shim passes those to the kernel; one that reaches a worker anyway
// is dropped).
var (
	errNoRoute    = errors.New("no route")
	errLocalRoute = errors.New("local or broadcast destination")
)

// router answers "which interface and next hop for dst" from the host's
// routing table in the dataplane's namespace. It is asked on a flow-cache
// miss only (a new flow, or once per flow per cache epoch). Multicast and
// broadcast destinations count as local: they are not forwarded.
type router interface {
	Lookup(dst netip.Addr) (ifindex int, gw netip.Addr, err error)
	Close() error
}

// resolver adapts internal/route (netlink RTM_GETROUTE with a cache that
// route changes invalidate) to the worker's questions.
type resolver struct{ r *route.Resolver }

func newResolver(ctx context.Context, nsPath string) (*resolver, error) {
	r, err := route.New(ctx, &route.Options{NetNSPath: nsPath})
	if err != nil {
		return nil, err
	}
	return &resolver{r: r}, nil
}

func (r *resolver) Lookup(dst netip.Addr) (int, netip.Addr, error) {
	if dst.IsMulticast() || (dst.Is4() && dst == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		return 0, netip.Addr{}, errLocalRoute
	}
	res, err := r.r.Lookup(dst)
	if err != nil {
		return 0, netip.Addr{}, errNoRoute
	}
	if res.Local {
		return 0, netip.Addr{}, errLocalRoute
	}
	return res.Ifindex, res.Gateway, nil
}

func (r *resolver) Close() error { return r.r.Close() }
