package userspacebackend

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/fwplane/fwplane/internal/netlab"
	"github.com/fwplane/fwplane/userspacebackend/internal/pkt"
)

// setPMTUDisc turns path MTU discovery (DF on every datagram) on or off
// for an IPv4 socket.
func setPMTUDisc(fd int, on bool) error {
	v := unix.IP_PMTUDISC_DONT
	if on {
		v = unix.IP_PMTUDISC_DO
	}
	return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, v)
}

// hop is what a probe learned from the ICMP error it got back.
type hop struct {
	from                          netip.Addr
	typ, code                     uint8
	timeExceeded, portUnreachable bool
}

// probe sends one UDP datagram with the given TTL (hop limit) from ns to
// dst, as traceroute does, and reads the ICMP error the kernel queues on
// the socket (IP_RECVERR), with who sent it.
func probe(ns *netlab.NS, dst netip.AddrPort, ttl int) (hop, error) {
	v4 := dst.Addr().Is4()
	var fd int
	err := ns.Do(func() error {
		var err error
		if v4 {
			fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
				return err
			}
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1); err != nil {
				return err
			}
			return unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
		}
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, ttl); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1); err != nil {
			return err
		}
		return unix.Connect(fd, &unix.SockaddrInet6{Addr: dst.Addr().As16(), Port: int(dst.Port())})
	})
	if fd > 0 {
		defer unix.Close(fd)
	}
	if err != nil {
		return hop{}, fmt.Errorf("open probe socket: %w", err)
	}
	if _, err := unix.Write(fd, []byte("probe")); err != nil {
		return hop{}, fmt.Errorf("send probe: %w", err)
	}
	deadline := time.Now().Add(3 * time.Second)
	buf, oob := make([]byte, 512), make([]byte, 512)
	for time.Now().Before(deadline) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLERR}}
		if _, err := unix.Poll(pfd, 100); err != nil && err != unix.EINTR {
			return hop{}, err
		}
		if pfd[0].Revents&unix.POLLERR == 0 {
			continue
		}
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE)
		if err != nil {
			return hop{}, fmt.Errorf("read error queue: %w", err)
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return hop{}, err
		}
		for _, m := range msgs {
			if !(m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR ||
				m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR) {
				continue
			}
			const eeLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
			if len(m.Data) < eeLen {
				continue
			}
			ee := (*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
			h := hop{typ: ee.Type, code: ee.Code}
			off := m.Data[eeLen:] // SO_EE_OFFENDER: the error's sender
			if v4 && len(off) >= 8 {
				h.from = netip.AddrFrom4([4]byte(off[4:8]))
				h.timeExceeded = ee.Origin == unix.SO_EE_ORIGIN_ICMP && ee.Type == 11
				h.portUnreachable = ee.Origin == unix.SO_EE_ORIGIN_ICMP && ee.Type == 3 && ee.Code == 3
			} else if !v4 && len(off) >= 24 {
				h.from = netip.AddrFrom16([16]byte(off[8:24]))
				h.timeExceeded = ee.Origin == unix.SO_EE_ORIGIN_ICMP6 && ee.Type == 3
				h.portUnreachable = ee.Origin == unix.SO_EE_ORIGIN_ICMP6 && ee.Type == 1 && ee.Code == 4
			}
			return h, nil
		}
	}
	return hop{}, fmt.Errorf("no ICMP error for the probe to %s with ttl %d", dst, ttl)
}

// sendForgedUnreachable sends, from the server, an ICMP port unreachable
// to the client that quotes a UDP datagram the client never sent (no
// session exists for it).
func sendForgedUnreachable(l *netlab.Lab) error {
	quote := make([]byte, 28)
	quote[0], quote[8], quote[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(quote[2:], 28)
	c, s := l.ClientAddr4.As4(), l.ServerAddr4.As4()
	copy(quote[12:16], c[:])
	copy(quote[16:20], s[:])
	binary.BigEndian.PutUint16(quote[10:], pkt.Checksum(quote[:20]))
	binary.BigEndian.PutUint16(quote[20:], 1111)
	binary.BigEndian.PutUint16(quote[22:], 2222)
	binary.BigEndian.PutUint16(quote[24:], 8)
	msg := append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quote...)
	binary.BigEndian.PutUint16(msg[2:], pkt.Checksum(msg))
	return l.Server.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: c})
	})
}
