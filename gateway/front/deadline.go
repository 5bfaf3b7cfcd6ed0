package front

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// deadlineConn is a connection whose read deadline is moved lazily. The
// HTTP/1.x server moves it twice per request (the idle wait, then the
// header read), and each move re-arms a runtime timer. Here a later
// deadline is only recorded; when the earlier one fires during a read, the
// recorded one is armed and the read goes on. A read therefore times out
// exactly when the deadline last asked for has passed, as with net.Conn.
// An earlier deadline, or one on a connection without any, is armed at
// once, so a deadline set to interrupt a blocked read still does.
type deadlineConn struct {
	net.Conn
	mu    sync.Mutex
	armed time.Time // the read deadline set on Conn
	want  time.Time // the read deadline last asked for
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	for {
		n, err := c.Conn.Read(b)
		if n > 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		rearmed, rerr := c.rearm()
		if rerr != nil {
			return n, rerr
		}
		if !rearmed {
			return n, err
		}
	}
}

// rearm arms the recorded read deadline after the armed one fired, unless
// the recorded one has passed too; it reports whether the read may go on.
func (c *deadlineConn) rearm() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.want.Equal(c.armed) || (!c.want.IsZero() && !time.Now().Before(c.want)) {
		return false, nil
	}
	c.armed = c.want
	return true, c.Conn.SetReadDeadline(c.want)
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.want = t
	if !c.armed.IsZero() && (t.IsZero() || !t.Before(c.armed)) {
		return nil // later than the armed one: armed when that one fires
	}
	c.armed = t
	return c.Conn.SetReadDeadline(t)
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// idleConn is an upstream connection on which a read fails when it waits
// longer than idle for its first byte, as nginx's proxy_read_timeout does:
// an upstream that stops answering, before or during its response, is cut
// off instead of holding the request. Its deadline moves lazily too.
type idleConn struct {
	deadlineConn
	idle time.Duration
}

func newIdleConn(c net.Conn, idle time.Duration) *idleConn {
	return &idleConn{deadlineConn: deadlineConn{Conn: c}, idle: idle}
}

func (c *idleConn) Read(b []byte) (int, error) {
	if err := c.deadlineConn.SetReadDeadline(time.Now().Add(c.idle)); err != nil {
		return 0, err
	}
	return c.deadlineConn.Read(b)
}
