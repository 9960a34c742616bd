package userspacebackend

import (
	"net/netip"
	"testing"
)

// TestICMPLimiter: per destination a burst of 6 then one per second; a
// second destination has its own burst; the global bucket allows 50 at
// once and then 1000 per second; ICMPv6 "too big" (perPeer false) skips
// the per-destination limit only.
func TestICMPLimiter(t *testing.T) {
	var l icmpLimiter
	a, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	now := int64(1e12)
	allowed := func(dst netip.Addr, perPeer bool, n int) int {
		k := 0
		for range n {
			if l.allow(now, dst, perPeer) {
				k++
			}
		}
		return k
	}
	if k := allowed(a, true, 10); k != 6 {
		t.Errorf("burst to one destination: %d allowed, want 6", k)
	}
	if k := allowed(c, true, 10); k != 6 {
		t.Errorf("burst to a second destination: %d allowed, want 6", k)
	}
	now += 1e9
	if k := allowed(a, true, 10); k != 1 {
		t.Errorf("one second later: %d allowed, want 1", k)
	}
	// The second refilled the global bucket to its burst of 50, one of
	// which the last error took.
	if k := allowed(a, false, 100); k != 49 {
		t.Errorf("without the per-destination limit: %d allowed, want the 49 left of the global burst", k)
	}
	now += 2e6
	if k := allowed(a, false, 10); k != 2 {
		t.Errorf("2 ms later: %d allowed, want 2 (1000/s)", k)
	}
}

func TestPortAddrsSource(t *testing.T) {
	pa := &portAddrs{
		v4: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("10.0.1.1/24")},
		v6: []netip.Prefix{netip.MustParsePrefix("fe80::1/64"), netip.MustParsePrefix("fd00:1::1/64"), netip.MustParsePrefix("fd00:9::1/64")},
	}
	for dst, want := range map[string]string{
		"10.0.1.7":    "10.0.1.1",  // the prefix that holds it
		"203.0.113.9": "192.0.2.1", // else the first
		"fd00:9::5":   "fd00:9::1", // the prefix that holds it
		"2001:db8::1": "fd00:1::1", // else the first global one
		"fe80::99":    "fe80::1",   // link-local to link-local
		"fd00:1::abc": "fd00:1::1",
	} {
		got, ok := pa.source(netip.MustParseAddr(dst))
		if !ok || got != netip.MustParseAddr(want) {
			t.Errorf("source(%s) = %s %v, want %s", dst, got, ok, want)
		}
	}
	if _, ok := (&portAddrs{v4: pa.v4}).source(netip.MustParseAddr("fd00::1")); ok {
		t.Error("an IPv6 source from an interface with IPv4 addresses only")
	}
	if _, ok := (*portAddrs)(nil).source(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("a source from no addresses")
	}
}
