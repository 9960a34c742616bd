//go:build linux

package netlab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Capturer records the frames an interface receives, byte for byte, with
// an AF_PACKET socket. The kernel strips a received 802.1Q tag into packet
// metadata before AF_PACKET sees the frame; Capturer puts it back (from
// PACKET_AUXDATA), so a tagged frame compares equal to what was sent.
// Frames the interface transmits are not recorded.
//
// Frames sent by a local socket keep the kernel's checksum offload state
// across veths: their TCP/UDP checksum field holds only the pseudo-header
// sum (the kernel flags them TP_STATUS_CSUMNOTREADY, which [Capturer.NextFrame]
// reports), so a full L4 checksum is expected only of frames that are not so
// flagged. It is safe for concurrent use; Close interrupts a blocked Next.
type Capturer struct {
	f       *os.File
	frames  chan Frame
	dropped atomic.Uint64
	done    chan struct{}
	once    sync.Once
}

// Capture starts recording frames received on iface in ns, keeping at most
// max (default 1024 when max <= 0) not yet taken by Next; frames beyond that
// are counted by Dropped and discarded.
func Capture(ns *NS, iface string, max int) (*Capturer, error) {
	if max <= 0 {
		max = 1024
	}
	var fd int
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", iface, ns, err)
		}
		// Protocol 0 receives nothing until bound, so no frame of another
		// interface slips in.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open packet socket: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			unix.Close(fd)
			return fmt.Errorf("enable PACKET_AUXDATA: %w", err)
		}
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}
		if err := unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", iface, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c := &Capturer{
		f:      os.NewFile(uintptr(fd), "packet:"+iface),
		frames: make(chan Frame, max),
		done:   make(chan struct{}),
	}
	rc, err := c.f.SyscallConn()
	if err != nil {
		c.f.Close()
		return nil, fmt.Errorf("capture %s: %w", iface, err)
	}
	go c.loop(rc)
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capturer) loop(rc interface {
	Read(func(uintptr) bool) error
}) {
	defer close(c.frames)
	buf := make([]byte, 65536)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{}))))
	for {
		var (
			n, oobn int
			from    unix.Sockaddr
			rerr    error
		)
		err := rc.Read(func(fd uintptr) bool {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf, oob, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		frame := Frame{Data: restoreVLAN(buf[:n], oob[:oobn]), ChecksumNotReady: csumNotReady(oob[:oobn])}
		select {
		case c.frames <- frame:
		default:
			c.dropped.Add(1)
		}
	}
}

// Frame is a captured frame with what the kernel said of it.
type Frame struct {
	Data []byte
	// ChecksumNotReady: the frame's L4 checksum was left to offload
	// (TP_STATUS_CSUMNOTREADY): its field holds the pseudo-header sum
	// (packet.Info.L4PartialOK), which the receiving stack trusts.
	ChecksumNotReady bool
}

// csumNotReady reads TP_STATUS_CSUMNOTREADY from a frame's PACKET_AUXDATA.
func csumNotReady(oob []byte) bool {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA &&
			len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
			return aux.Status&unix.TP_STATUS_CSUMNOTREADY != 0
		}
	}
	return false
}

// restoreVLAN returns a copy of frame with the VLAN tag the kernel moved
// into the auxiliary data, if any, put back after the MAC addresses.
func restoreVLAN(frame, oob []byte) []byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err == nil {
		for _, m := range msgs {
			if m.Header.Level != unix.SOL_PACKET || m.Header.Type != unix.PACKET_AUXDATA ||
				len(m.Data) < int(unsafe.Sizeof(unix.TpacketAuxdata{})) || len(frame) < 12 {
				continue
			}
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
			if aux.Status&unix.TP_STATUS_VLAN_VALID == 0 {
				continue
			}
			tpid := uint16(0x8100)
			if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
				tpid = aux.Vlan_tpid
			}
			out := make([]byte, 0, len(frame)+4)
			out = append(out, frame[:12]...)
			out = binary.BigEndian.AppendUint16(out, tpid)
			out = binary.BigEndian.AppendUint16(out, aux.Vlan_tci)
			return append(out, frame[12:]...)
		}
	}
	return append([]byte(nil), frame...)
}

// Next returns the next recorded frame, waiting until one arrives, ctx
// ends, or the capturer is closed (net.ErrClosed).
func (c *Capturer) Next(ctx context.Context) ([]byte, error) {
	f, err := c.NextFrame(ctx)
	return f.Data, err
}

// NextFrame is Next with what the kernel said of the frame.
func (c *Capturer) NextFrame(ctx context.Context) (Frame, error) {
	select {
	case f, ok := <-c.frames:
		if !ok {
			return Frame{}, fmt.Errorf("capture next frame: %w", net.ErrClosed)
		}
		return f, nil
	case <-ctx.Done():
		return Frame{}, fmt.Errorf("capture next frame: %w", ctx.Err())
	}
}

// Dropped returns how many frames were discarded because max frames were
// waiting.
func (c *Capturer) Dropped() uint64 { return c.dropped.Load() }

// Close stops capturing. It is safe on nil and idempotent; frames already
// recorded can still be taken with Next until it reports net.ErrClosed.
func (c *Capturer) Close() error {
	if c == nil {
		return nil
	}
	var err error
	c.once.Do(func() {
		err = c.f.Close()
		if errors.Is(err, os.ErrClosed) {
			err = nil
		}
	})
	return err
}
