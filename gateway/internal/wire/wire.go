// Package wire sends test requests written field by field over HTTP/1.1
// and HTTP/2, bypassing the checks and rewrites of Go's HTTP clients, so
// that tests can send what a hostile client would: raw paths, odd header
// names, trailers.
package wire

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Request is a request described field by field.
type Request struct {
	Method, Authority, Path string
	// Header fields in order; on HTTP/2 their names are sent lower-cased.
	Header [][2]string
	Body   string
	// Chunked sends the body without a length (HTTP/1.1 chunked, HTTP/2
	// without content-length).
	Chunked bool
	// Trailer fields follow the body (which is then sent without length).
	Trailer [][2]string
}

// Response is what came back. Reset is set when the server refused the
// request at the protocol level (HTTP/2 RST_STREAM or GOAWAY, or an
// HTTP/1.1 connection closed without an answer).
type Response struct {
	Status int
	Header http.Header
	Body   []byte
	Reset  bool
}

// Dialer opens the connection of one request.
type Dialer func() (net.Conn, error)

// TCP dials addr, from local (an address on this machine) when it is set.
func TCP(addr, local string) Dialer {
	return func() (net.Conn, error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		return d.Dial("tcp", addr)
	}
}

// TLS dials addr with TLS, offering the one ALPN protocol proto.
func TLS(addr string, cfg *tls.Config, proto string) Dialer {
	return func() (net.Conn, error) {
		c := cfg.Clone()
		c.NextProtos = []string{proto}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, c)
		if err != nil {
			return nil, err
		}
		if conn.ConnectionState().NegotiatedProtocol != proto {
			conn.Close()
			return nil, fmt.Errorf("ALPN: got %q, want %q", conn.ConnectionState().NegotiatedProtocol, proto)
		}
		return conn, nil
	}
}

// HTTP1 writes r as HTTP/1.1 on a new connection and reads one answer.
func HTTP1(dial Dialer, r Request) (*Response, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.Method, r.Path, r.Authority)
	for _, h := range r.Header {
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	chunked := r.Chunked || len(r.Trailer) > 0
	switch {
	case chunked:
		b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		if r.Body != "" {
			fmt.Fprintf(&b, "%x\r\n%s\r\n", len(r.Body), r.Body)
		}
		b.WriteString("0\r\n")
		for _, h := range r.Trailer {
			fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
		}
		b.WriteString("\r\n")
	case r.Body != "":
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(r.Body), r.Body)
	default:
		b.WriteString("\r\n")
	}
	return Raw(c, b.Bytes(), r.Method)
}

// Raw writes request bytes as they are on c and reads one HTTP/1.1 answer;
// a connection closed without one is a Reset response.
func Raw(c net.Conn, req []byte, method string) (*Response, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &Response{Reset: true}, nil
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// HTTP2 sends r as the one stream of a new HTTP/2 connection (cleartext
// with prior knowledge, or TLS with ALPN h2, as dial makes it) and reads
// its answer.
func HTTP2(dial Dialer, scheme string, r Request) (*Response, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		return nil, err
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	if err := fr.WriteSettings(); err != nil {
		return nil, err
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	field := func(k, v string) { _ = enc.WriteField(hpack.HeaderField{Name: k, Value: v}) }
	field(":method", r.Method)
	field(":scheme", scheme)
	field(":authority", r.Authority)
	field(":path", r.Path)
	for _, h := range r.Header {
		field(strings.ToLower(h[0]), h[1])
	}
	withBody := r.Body != "" || len(r.Trailer) > 0
	if r.Body != "" && !r.Chunked && len(r.Trailer) == 0 {
		field("content-length", strconv.Itoa(len(r.Body)))
	}
	const id = 1
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: !withBody}); err != nil {
		return nil, err
	}
	if withBody {
		if err := fr.WriteData(id, len(r.Trailer) == 0, []byte(r.Body)); err != nil {
			return nil, err
		}
		if len(r.Trailer) > 0 {
			hb.Reset()
			for _, h := range r.Trailer {
				field(strings.ToLower(h[0]), h[1])
			}
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
				return nil, err
			}
		}
	}
	resp := &Response{Header: http.Header{}}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if resp.Status == 0 {
				resp.Reset = true
				return resp, nil
			}
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = fr.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			if resp.Status == 0 {
				resp.Reset = true
				return resp, nil
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				resp.Reset = resp.Status == 0
				return resp, nil
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				continue
			}
			for _, hf := range f.Fields {
				if hf.Name == ":status" {
					resp.Status, _ = strconv.Atoi(hf.Value)
				} else if !hf.IsPseudo() {
					resp.Header.Add(hf.Name, hf.Value)
				}
			}
			if f.StreamEnded() {
				return resp, nil
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			resp.Body = append(resp.Body, f.Data()...)
			if n := len(f.Data()); n > 0 {
				_ = fr.WriteWindowUpdate(0, uint32(n))
				_ = fr.WriteWindowUpdate(id, uint32(n))
			}
			if f.StreamEnded() {
				return resp, nil
			}
		}
	}
}
