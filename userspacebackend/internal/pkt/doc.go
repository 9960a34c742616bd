// Package pkt parses and edits Ethernet frames in place for the userspace
// AF_XDP datapath, without allocating.
//
// # What Parse understands
//
//   - Ethernet II with at most one 802.1Q (0x8100) or 802.1ad (0x88a8) tag.
//     A second tag (QinQ) is [ErrUnsupported].
//   - IPv4 with options (IHL 5..15). Fragments: the first fragment (offset
//     0, MF set) is parsed normally and flagged [FlagFragment]; a later
//     fragment (offset != 0) has no transport header, so its ports are 0 and
//     it is flagged FlagFragment|[FlagLaterFragment].
//   - IPv6 with up to [MaxExtHeaders] extension headers of the kinds
//     Hop-by-Hop (0), Routing (43), Destination Options (60) and Fragment
//     (44), handled as for IPv4 fragments. More extension headers than that
//     is [ErrUnsupported]. Any other next-header value is the upper-layer
//     protocol (AH and ESP included: they are reported as protocols 51/50
//     without ports, not walked).
//   - TCP and UDP: source and destination ports. ICMP (1) and ICMPv6 (58):
//     for echo request/reply (types 8/0 and 128/129) the identifier goes in
//     both ports, so a reply's tuple is the reverse of its request's; other
//     ICMP types have ports 0. Other protocols have ports 0.
//
// Everything else is refused with an error: [ErrNotIP] for a non-IP
// EtherType (ARP, LLDP: the caller passes these to the kernel),
// [ErrTruncated] when a header runs past the frame, [ErrMalformed] for an
// inconsistent header (wrong version, IHL < 5, total length shorter than the
// header). Padding after the IP datagram (short Ethernet frames) is ignored:
// the IP length bounds the L4 payload, not the frame length.
//
// # Errors
//
// Errors are package-level sentinels, returned unwrapped so the hot path
// does not allocate; match them with errors.Is.
//
// # Concurrency
//
// Functions are pure: they only touch the frame and the Info they are given,
// so they are safe for concurrent use on distinct frames.
package pkt
