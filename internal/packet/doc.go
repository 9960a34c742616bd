// Package packet builds and parses the Ethernet frames fwplane's tests and
// traffic generators send: UDP, TCP and ICMP echo over IPv4 or IPv6, with an
// optional single 802.1Q VLAN tag, correct IPv4 header checksums and correct
// L4 checksums (including the IPv6 pseudo-header).
//
// The package is pure Go and builds on any OS.
//
// # Errors
//
// The builders ([UDP], [TCP], [ICMPEcho]) return nil for a [Spec] that
// [Spec.Validate] rejects, so a test that forgot an address fails loudly
// instead of sending garbage; call Validate (or [Build]) to learn why.
// Validation and parse errors wrap [ErrInvalidSpec], [ErrTruncated] or
// [ErrUnsupported] and are matched with [errors.Is].
//
// # Concurrency
//
// Every function is safe for concurrent use. Returned frames are freshly
// allocated and owned by the caller; [Info.Payload] aliases the parsed frame.
package packet
