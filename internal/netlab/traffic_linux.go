//go:build linux

package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultTimeout bounds a round trip whose context has no deadline.
const DefaultTimeout = 2 * time.Second

// bound applies ctx to conn: its deadline (or DefaultTimeout) and its
// cancellation. The returned func releases the cancellation hook.
func bound(ctx context.Context, conn net.Conn) (release func() bool) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultTimeout)
	}
	conn.SetDeadline(deadline)
	return context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
}

// ctxErr prefers the context's error over the timeout it caused.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// reuseAddr lets a test pick a fixed source port again after the previous
// socket closed (a TCP 4-tuple in TIME_WAIT still cannot be reused).
func reuseAddr(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	})
	return errors.Join(err, serr)
}

// localFor returns src, or the unspecified address of dst's family when src
// has no address, so the kernel picks the source.
func localFor(src, dst netip.AddrPort) netip.AddrPort {
	if src.Addr().IsValid() {
		return src
	}
	if dst.Addr().Is4() {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), src.Port())
	}
	return netip.AddrPortFrom(netip.IPv6Unspecified(), src.Port())
}

// UDPEcho starts a UDP server bound to addr inside ns that sends every
// datagram back to its sender. It runs until stop is called or ctx ends;
// stop is idempotent and waits for the server to exit.
func UDPEcho(ctx context.Context, ns *NS, addr netip.AddrPort) (stop func(), err error) {
	var conn *net.UDPConn
	err = ns.Do(func() error {
		var lc net.ListenConfig
		pc, err := lc.ListenPacket(ctx, "udp", addr.String())
		if err != nil {
			return fmt.Errorf("listen udp %s in %s: %w", addr, ns, err)
		}
		conn = pc.(*net.UDPConn)
		return nil
	})
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed
			}
			conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return stopper(ctx, conn, done, nil), nil
}

// stopper returns an idempotent stop for a server that exits when c closes,
// also called when ctx ends.
func stopper(ctx context.Context, c io.Closer, done chan struct{}, extra func()) func() {
	var once sync.Once
	stop := func() {
		once.Do(func() {
			c.Close()
			if extra != nil {
				extra()
			}
			<-done
		})
	}
	release := context.AfterFunc(ctx, stop)
	return func() { release(); stop() }
}

// UDPRoundTrip sends payload from src to dst in a UDP datagram from inside
// ns and returns the first datagram dst sends back. A zero src lets the
// kernel pick address and port; a src with only a port fixes the port, so
// tests can create distinct flows. It gives up when ctx ends or, without a
// deadline, after DefaultTimeout.
func UDPRoundTrip(ctx context.Context, ns *NS, src, dst netip.AddrPort, payload []byte) ([]byte, error) {
	var conn *net.UDPConn
	err := ns.Do(func() error {
		d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(localFor(src, dst)), Control: reuseAddr}
		c, err := d.DialContext(ctx, "udp", dst.String())
		if err != nil {
			return fmt.Errorf("dial udp %s from %s in %s: %w", dst, src, ns, err)
		}
		conn = c.(*net.UDPConn)
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	defer bound(ctx, conn)()
	if _, err := conn.Write(payload); err != nil {
		return nil, fmt.Errorf("send udp to %s: %w", dst, ctxErr(ctx, err))
	}
	buf := make([]byte, 65536)
	n, err := conn.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("receive udp from %s: %w", dst, ctxErr(ctx, err))
	}
	return buf[:n], nil
}

// TCPEcho starts a TCP server listening on addr inside ns that echoes each
// connection's bytes until the client closes its side. It runs until stop
// is called or ctx ends; stop is idempotent, closes open connections and
// waits for the server to exit.
func TCPEcho(ctx context.Context, ns *NS, addr netip.AddrPort) (stop func(), err error) {
	var ln net.Listener
	err = ns.Do(func() error {
		lc := net.ListenConfig{Control: reuseAddr}
		l, err := lc.Listen(ctx, "tcp", addr.String())
		if err != nil {
			return fmt.Errorf("listen tcp %s in %s: %w", addr, ns, err)
		}
		ln = l
		return nil
	})
	if err != nil {
		return nil, err
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				wg.Wait()
				return // closed
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	closeConns := func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	}
	return stopper(ctx, ln, done, closeConns), nil
}

// TCPRoundTrip connects from src to dst inside ns, sends payload, closes its
// sending side and returns everything dst sends until it closes. Source
// selection and timeouts are as for [UDPRoundTrip]. The client closes
// first, so its 4-tuple stays in TIME_WAIT for a minute: use a new source
// port for every round trip that fixes one.
func TCPRoundTrip(ctx context.Context, ns *NS, src, dst netip.AddrPort, payload []byte) ([]byte, error) {
	var conn *net.TCPConn
	err := ns.Do(func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(localFor(src, dst)), Control: reuseAddr}
		if _, ok := ctx.Deadline(); !ok {
			d.Timeout = DefaultTimeout
		}
		c, err := d.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return fmt.Errorf("dial tcp %s from %s in %s: %w", dst, src, ns, err)
		}
		conn = c.(*net.TCPConn)
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	defer bound(ctx, conn)()
	if _, err := conn.Write(payload); err != nil {
		return nil, fmt.Errorf("send tcp to %s: %w", dst, ctxErr(ctx, err))
	}
	if err := conn.CloseWrite(); err != nil {
		return nil, fmt.Errorf("close tcp write side to %s: %w", dst, ctxErr(ctx, err))
	}
	resp, err := io.ReadAll(conn)
	if err != nil {
		return resp, fmt.Errorf("receive tcp from %s: %w", dst, ctxErr(ctx, err))
	}
	return resp, nil
}
