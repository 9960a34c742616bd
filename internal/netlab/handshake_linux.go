//go:build linux

package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// CloseMode is how [Handshakes] ends each connection.
type CloseMode int

const (
	// CloseFIN closes normally: FIN from the client, then from the
	// server.
	CloseFIN CloseMode = iota
	// CloseRST aborts: the client sends RST (SO_LINGER 0).
	CloseRST
)

func (m CloseMode) String() string {
	if m == CloseRST {
		return "rst"
	}
	return "fin"
}

// HandshakeOptions configures [Handshakes]; nil means defaults.
type HandshakeOptions struct {
	// Count is how many connections to attempt; 0 means until Duration.
	Count int
	// Duration bounds the run (besides ctx); 0 means 1 s when Count is 0,
	// else no bound.
	Duration time.Duration
	// Rate is the connection attempts started per second, paced from the
	// start (a late attempt is not made up by a burst: it starts at once
	// and the schedule goes on); 0 means as fast as Workers allow.
	Rate float64
	// Workers is the number of connects in flight at most; 0 means 16.
	Workers int
	// Close is how each completed connection ends.
	Close CloseMode
	// Timeout bounds each connect; 0 means 1 s.
	Timeout time.Duration
}

// HandshakeResult counts what the client saw.
type HandshakeResult struct {
	// Attempted connects; Completed: handshakes done (connect returned
	// a connection); Failed = Attempted - Completed.
	Attempted, Completed, Failed int
	// Errors counts failures by kind: "refused" (RST answered the SYN),
	// "timeout", "unreachable", or the error's text.
	Errors  map[string]int
	Elapsed time.Duration
	// Rate is Completed per second of Elapsed.
	Rate float64
}

// Handshakes makes TCP connections from inside ns to dst at a chosen rate,
// each a complete handshake closed at once (with FIN or RST), and counts
// the successes and failures: new connections per second through a
// firewall, from real sockets. It widens ns's ephemeral port range and
// lets TIME_WAIT ports be reused for new connections (sysctls of ns:
// net.ipv4.ip_local_port_range, net.ipv4.tcp_tw_reuse), so a long run is
// not limited by the client's own ports. Only ctx ending is an error;
// failed connections are counted.
func Handshakes(ctx context.Context, ns *NS, dst netip.AddrPort, opts *HandshakeOptions) (HandshakeResult, error) {
	o := HandshakeOptions{Workers: 16, Timeout: time.Second}
	if opts != nil {
		o = *opts
		if o.Workers <= 0 {
			o.Workers = 16
		}
		if o.Timeout <= 0 {
			o.Timeout = time.Second
		}
	}
	if o.Count == 0 && o.Duration == 0 {
		o.Duration = time.Second
	}
	res := HandshakeResult{Errors: map[string]int{}}
	if o.Count < 0 || o.Rate < 0 {
		return res, fmt.Errorf("handshakes: negative count %d or rate %g", o.Count, o.Rate)
	}
	err := ns.Do(func() error {
		if err := setSysctl("net/ipv4/ip_local_port_range", "1024 65535"); err != nil {
			return err
		}
		return setSysctl("net/ipv4/tcp_tw_reuse", "1")
	})
	if err != nil {
		return res, fmt.Errorf("handshakes: %w", err)
	}
	parent := ctx
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}

	tickets := make(chan struct{})
	var (
		mu        sync.Mutex
		completed atomic.Int64
		attempted atomic.Int64
		wg        sync.WaitGroup
		werrs     = make([]error, o.Workers)
	)
	start := time.Now()
	for w := range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each worker stays on a thread inside ns for the whole run,
			// so every socket it makes belongs to ns.
			werrs[w] = ns.Do(func() error {
				d := net.Dialer{Timeout: o.Timeout}
				for range tickets {
					attempted.Add(1)
					c, err := d.Dial("tcp", dst.String())
					if err != nil {
						kind := dialErrorKind(err)
						mu.Lock()
						res.Errors[kind]++
						mu.Unlock()
						continue
					}
					completed.Add(1)
					if o.Close == CloseRST {
						c.(*net.TCPConn).SetLinger(0)
					}
					c.Close()
				}
				return nil
			})
		}()
	}
	interval := time.Duration(0)
	if o.Rate > 0 {
		interval = time.Duration(float64(time.Second) / o.Rate)
	}
dispatch:
	for i := 0; o.Count == 0 || i < o.Count; i++ {
		if interval > 0 {
			if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					break dispatch
				}
			}
		}
		select {
		case tickets <- struct{}{}:
		case <-ctx.Done():
			break dispatch
		}
	}
	close(tickets)
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Attempted, res.Completed = int(attempted.Load()), int(completed.Load())
	res.Failed = res.Attempted - res.Completed
	if res.Elapsed > 0 {
		res.Rate = float64(res.Completed) / res.Elapsed.Seconds()
	}
	if err := errors.Join(werrs...); err != nil {
		return res, fmt.Errorf("handshakes: %w", err)
	}
	// A Duration that ran out is the planned end; the caller's ctx
	// ending is not.
	if err := parent.Err(); err != nil {
		return res, fmt.Errorf("handshakes: %d attempted: %w", res.Attempted, err)
	}
	return res, nil
}

// dialErrorKind names a failed connect for HandshakeResult.Errors.
func dialErrorKind(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no local port"
	}
	return err.Error()
}

// Acceptor is a TCP server for [Handshakes]: it accepts every connection
// and reads it until the client ends it, counting how each ended. It is
// safe for concurrent use.
type Acceptor struct {
	ln                   net.Listener
	accepted, eofs, rsts atomic.Uint64
	other                atomic.Uint64
	wg                   sync.WaitGroup
	done                 chan struct{}
	closeOnce            sync.Once
	mu                   sync.Mutex
	conns                map[net.Conn]struct{}
}

// AcceptorCounts are an [Acceptor]'s counts so far.
type AcceptorCounts struct {
	// Accepted connections; of those ended: by the client's FIN (EOF), by
	// its RST, or otherwise (read error, or closed by Close).
	Accepted, FIN, RST, Other uint64
}

// Accept starts an Acceptor listening on addr in ns (backlog: the
// namespace's net.core.somaxconn).
func Accept(ctx context.Context, ns *NS, addr netip.AddrPort) (*Acceptor, error) {
	a := &Acceptor{done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	err := ns.Do(func() error {
		lc := net.ListenConfig{Control: reuseAddr}
		ln, err := lc.Listen(ctx, "tcp", addr.String())
		if err != nil {
			return fmt.Errorf("listen tcp %s in %s: %w", addr, ns, err)
		}
		a.ln = ln
		return nil
	})
	if err != nil {
		return nil, err
	}
	go a.loop()
	return a, nil
}

func (a *Acceptor) loop() {
	defer close(a.done)
	for {
		c, err := a.ln.Accept()
		if err != nil {
			a.wg.Wait()
			return
		}
		a.accepted.Add(1)
		a.mu.Lock()
		a.conns[c] = struct{}{}
		a.mu.Unlock()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			_, err := io.Copy(io.Discard, c)
			switch {
			case err == nil:
				a.eofs.Add(1)
			case errors.Is(err, syscall.ECONNRESET):
				a.rsts.Add(1)
			default:
				a.other.Add(1)
			}
			c.Close()
			a.mu.Lock()
			delete(a.conns, c)
			a.mu.Unlock()
		}()
	}
}

// Counts returns the counts so far.
func (a *Acceptor) Counts() AcceptorCounts {
	return AcceptorCounts{Accepted: a.accepted.Load(), FIN: a.eofs.Load(), RST: a.rsts.Load(), Other: a.other.Load()}
}

// Close stops accepting, closes open connections and waits for the
// server to exit. It is idempotent.
func (a *Acceptor) Close() error {
	var err error
	a.closeOnce.Do(func() {
		err = a.ln.Close()
		a.mu.Lock()
		for c := range a.conns {
			c.Close()
		}
		a.mu.Unlock()
		<-a.done
	})
	return err
}
