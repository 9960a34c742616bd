//go:build linux

package netlab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BulkResult is one bulk transfer, measured by the sender from connect
// until the receiver confirmed the last byte.
type BulkResult struct {
	Bytes   int64
	Elapsed time.Duration
	// Gbps is Bytes in gigabits per second of Elapsed.
	Gbps float64
}

// TCPBulk sends n bytes over one TCP connection from client to a receiver
// it starts on dst in server, and returns when the receiver has counted
// every byte: the receiver reads until the client's FIN and answers with
// its count, which must equal n. It gives up when ctx ends.
func TCPBulk(ctx context.Context, client, server *NS, dst netip.AddrPort, n int64) (BulkResult, error) {
	var res BulkResult
	if n < 0 {
		return res, fmt.Errorf("tcp bulk: negative size %d", n)
	}
	var ln net.Listener
	err := server.Do(func() error {
		lc := net.ListenConfig{Control: reuseAddr}
		l, err := lc.Listen(ctx, "tcp", dst.String())
		if err != nil {
			return fmt.Errorf("listen tcp %s in %s: %w", dst, server, err)
		}
		ln = l
		return nil
	})
	if err != nil {
		return res, err
	}
	defer ln.Close()
	recvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			recvErr <- fmt.Errorf("accept on %s: %w", dst, err)
			return
		}
		defer c.Close()
		defer bound(ctx, c)()
		got, err := io.Copy(io.Discard, c)
		if err != nil {
			recvErr <- fmt.Errorf("receive bulk on %s after %d bytes: %w", dst, got, ctxErr(ctx, err))
			return
		}
		_, err = c.Write(binary.BigEndian.AppendUint64(nil, uint64(got)))
		recvErr <- err
	}()

	var conn net.Conn
	start := time.Now()
	err = client.Do(func() error {
		d := net.Dialer{}
		c, err := d.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return fmt.Errorf("dial tcp %s in %s: %w", dst, client, err)
		}
		conn = c
		return nil
	})
	if err != nil {
		ln.Close()
		<-recvErr
		return res, err
	}
	defer conn.Close()
	release := bound(ctx, conn)
	defer release()
	buf := make([]byte, 256<<10)
	for left := n; left > 0; {
		w, err := conn.Write(buf[:min(left, int64(len(buf)))])
		left -= int64(w)
		if err != nil {
			return res, fmt.Errorf("send bulk to %s after %d of %d bytes: %w", dst, n-left, n, ctxErr(ctx, err))
		}
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return res, fmt.Errorf("close bulk write side to %s: %w", dst, ctxErr(ctx, err))
	}
	var ack [8]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		rerr := <-recvErr
		return res, errors.Join(fmt.Errorf("read the receiver's count from %s: %w", dst, ctxErr(ctx, err)), rerr)
	}
	res.Elapsed = time.Since(start)
	if err := <-recvErr; err != nil {
		return res, err
	}
	res.Bytes = int64(binary.BigEndian.Uint64(ack[:]))
	if res.Bytes != n {
		return res, fmt.Errorf("tcp bulk to %s: receiver counted %d bytes, sent %d", dst, res.Bytes, n)
	}
	res.Gbps = float64(res.Bytes) * 8 / res.Elapsed.Seconds() / 1e9
	return res, nil
}

// IPerf3Options configures an [IPerf3] run; nil means defaults.
type IPerf3Options struct {
	// Streams is the number of parallel TCP streams (-P); 0 means 1.
	Streams int
	// Duration is how long the client sends (-t); 0 means 3 s.
	Duration time.Duration
	// Port is the server's port; 0 means 5201.
	Port uint16
	// Binary is the iperf3 executable; "" means "iperf3" from PATH.
	Binary string
}

// IPerf3Result is what iperf3's JSON report says about a TCP test.
type IPerf3Result struct {
	// Gbps is the receiver's throughput (end.sum_received).
	Gbps float64
	// Bytes received, over Seconds.
	Bytes   uint64
	Seconds float64
	// Retransmits counted by the sender's TCP stack.
	Retransmits uint64
}

// IPerf3 runs an iperf3 TCP test from client to an iperf3 server it starts
// on dst in server (one-off: it exits after the test) and parses the
// client's JSON report. Both processes run in their namespaces (forked
// from a thread inside it) and are killed if ctx ends or this process
// dies. It needs the iperf3 binary (Debian package iperf3).
func IPerf3(ctx context.Context, client, server *NS, dst netip.Addr, opts *IPerf3Options) (IPerf3Result, error) {
	var res IPerf3Result
	o := IPerf3Options{Streams: 1, Duration: 3 * time.Second, Port: 5201, Binary: "iperf3"}
	if opts != nil {
		if opts.Streams > 0 {
			o.Streams = opts.Streams
		}
		if opts.Duration > 0 {
			o.Duration = opts.Duration
		}
		if opts.Port != 0 {
			o.Port = opts.Port
		}
		if opts.Binary != "" {
			o.Binary = opts.Binary
		}
	}
	bin, err := exec.LookPath(o.Binary)
	if err != nil {
		return res, fmt.Errorf("run iperf3: %w (install the iperf3 package)", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	port := strconv.Itoa(int(o.Port))

	srv := exec.CommandContext(ctx, bin, "-s", "-1", "--forceflush", "-B", dst.String(), "-p", port)
	var srvErr bytes.Buffer
	srv.Stderr = &srvErr
	srvOut, err := srv.StdoutPipe()
	if err != nil {
		return res, fmt.Errorf("start iperf3 server: %w", err)
	}
	if err := startIn(server, srv); err != nil {
		return res, fmt.Errorf("start iperf3 server in %s: %w", server, err)
	}
	srvDone := make(chan error, 1)
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(srvOut)
		seen := false
		for sc.Scan() {
			if !seen && strings.Contains(sc.Text(), "Server listening") {
				close(listening)
				seen = true
			}
		}
		srvDone <- srv.Wait()
	}()
	defer func() {
		cancel()
		<-srvDone
	}()
	select {
	case <-listening:
	case err := <-srvDone:
		srvDone <- err
		return res, fmt.Errorf("iperf3 server in %s exited before listening: %v: %s", server, err, strings.TrimSpace(srvErr.String()))
	case <-time.After(5 * time.Second):
		return res, fmt.Errorf("iperf3 server in %s not listening after 5s: %s", server, strings.TrimSpace(srvErr.String()))
	case <-ctx.Done():
		return res, fmt.Errorf("start iperf3 server: %w", ctx.Err())
	}

	secs := strconv.FormatFloat(o.Duration.Seconds(), 'f', -1, 64)
	cli := exec.CommandContext(ctx, bin, "-c", dst.String(), "-p", port, "-t", secs, "-P", strconv.Itoa(o.Streams),
		"-J", "--connect-timeout", "3000")
	var out, cliErr bytes.Buffer
	cli.Stdout, cli.Stderr = &out, &cliErr
	if err := startIn(client, cli); err != nil {
		return res, fmt.Errorf("start iperf3 client in %s: %w", client, err)
	}
	werr := cli.Wait()
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits uint64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				Bytes         uint64  `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil {
		return res, fmt.Errorf("iperf3 client in %s: %v (exit: %v): %s", client, jerr, werr, strings.TrimSpace(cliErr.String()))
	}
	if rep.Error != "" || werr != nil {
		return res, fmt.Errorf("iperf3 client in %s: %s (exit: %v)", client, rep.Error, ctxErr(ctx, werr))
	}
	r := rep.End.SumReceived
	if r.Bytes == 0 || r.Seconds <= 0 {
		return res, fmt.Errorf("iperf3 client in %s: no bytes received (report: %d bytes in %.2fs)", client, r.Bytes, r.Seconds)
	}
	return IPerf3Result{Gbps: r.BitsPerSecond / 1e9, Bytes: r.Bytes, Seconds: r.Seconds, Retransmits: rep.End.SumSent.Retransmits}, nil
}

// startIn starts cmd in ns: a child forked from a thread inside the
// namespace is born in it. Pdeathsig kills it if this process dies (and,
// as the kernel ties it to the forking thread, if that thread exits: Do's
// threads outlive the call unless restoring the namespace failed).
func startIn(ns *NS, cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return ns.Do(cmd.Start)
}
