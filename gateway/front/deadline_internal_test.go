package front

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// connPair returns both ends of a loopback TCP connection, the first one
// wrapped in a deadlineConn.
func connPair(t *testing.T) (*deadlineConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = c.Close(); _ = peer.Close() })
	return &deadlineConn{Conn: c}, peer
}

// readOne reads one byte and reports how long it took.
func readOne(c net.Conn) (time.Duration, error) {
	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	return time.Since(start), err
}

func TestDeadlineConnExtendedDeadlineLetsReadGoOn(t *testing.T) {
	c, peer := connPair(t)
	if err := c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, func() { _, _ = peer.Write([]byte("x")) })
	took, err := readOne(c)
	if err != nil {
		t.Fatalf("read after the first deadline, before the extended one: %v (after %s)", err, took)
	}
	if took < 150*time.Millisecond {
		t.Fatalf("read returned after %s, before the peer wrote", took)
	}
}

func TestDeadlineConnTimesOutAtTheLastDeadline(t *testing.T) {
	c, _ := connPair(t)
	if err := c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	took, err := readOne(c)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read error %v, want a deadline error", err)
	}
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Fatalf("read timed out after %s, want about 300ms", took)
	}
	// The connection stays timed out, as a net.Conn does.
	if _, err := readOne(c); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second read error %v, want a deadline error", err)
	}
}

func TestDeadlineConnClearedDeadline(t *testing.T) {
	c, peer := connPair(t)
	if err := c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, func() { _, _ = peer.Write([]byte("x")) })
	if took, err := readOne(c); err != nil {
		t.Fatalf("read without a deadline: %v (after %s)", err, took)
	}
}

func TestDeadlineConnEarlierDeadlineInterruptsRead(t *testing.T) {
	c, _ := connPair(t)
	if err := c.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(100*time.Millisecond, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	took, err := readOne(c)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read error %v, want a deadline error", err)
	}
	if took > 3*time.Second {
		t.Fatalf("a deadline in the past took %s to interrupt the read", took)
	}
}

func TestDeadlineConnSetDeadlineCoversWrites(t *testing.T) {
	c, _ := connPair(t)
	if err := c.SetDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write error %v, want a deadline error", err)
	}
	if _, err := readOne(c); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read error %v, want a deadline error", err)
	}
}
