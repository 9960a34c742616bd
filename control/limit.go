package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// limitListener caps the connections open at once. A connection over the
// cap is not left waiting in the kernel's backlog, where the client cannot
// tell a busy daemon from a hung one: its request is read (briefly) and
// answered with 503 busy, then it is closed.
type limitListener struct {
	net.Listener
	max     int
	open    atomic.Int64
	refused atomic.Uint64
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > int64(l.max) {
			l.open.Add(-1)
			l.refused.Add(1)
			go refuseBusy(c, l.max)
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// refuseBusy answers one request on c with 503 and closes it. It reads the
// request head first (for at most a second), so that the client has sent
// its request before the reply arrives and sees the reply, not a reset.
func refuseBusy(c net.Conn, max int) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	br := bufio.NewReaderSize(c, 4096)
	for n := 0; n < 64; n++ { // at most 64 header lines
		line, err := br.ReadSlice('\n')
		if err != nil || len(bytes.TrimSpace(line)) == 0 {
			break
		}
	}
	body, _ := json.Marshal(ErrorReply{Code: CodeBusy,
		Message: "too many control connections open (at most " + strconv.Itoa(max) + "): retry later"})
	body = append(body, '\n')
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(body)))
	b.WriteString("\r\n\r\n")
	b.Write(body)
	c.Write(b.Bytes())
}
