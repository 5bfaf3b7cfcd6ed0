package core

import (
	"context"
	"crypto/tls"
	"io"
	"net/netip"

	"github.com/kmsgate/kmsgate/gateway/header"
)

// Headers is a request's header fields as a server received them.
type Headers interface {
	// Get returns the first value of a header, by canonical name.
	Get(name string) string
	// Values returns every value of a header, by canonical name.
	Values(name string) []string
	// All yields every field, names as received, until yield returns
	// false; the strings are valid only during the call.
	All(yield func(name, value string) bool)
}

// Request is the protocol-neutral view of a request that both servers
// build and the core judges: method, target as received, host, peer, TLS,
// headers and body. Serve fills in the normalized path.
type Request struct {
	// Ctx is the request's context; it ends when the client goes away,
	// but not when the server starts shutting down.
	Ctx context.Context
	// Method is the request method.
	Method string
	// Target is the request target as received (the :path of HTTP/2):
	// origin-form, or on HTTP/1.x absolute-form.
	Target string
	// Authority is the Host header, or HTTP/2's :authority.
	Authority string
	// Addr is the address of the connection's other end.
	Addr netip.Addr
	// TLSState is the connection's TLS state, nil without TLS.
	TLSState *tls.ConnectionState
	// Headers are the request's header fields.
	Headers Headers
	// Body is the request body (nil or empty without one), and BodyLen its
	// length: -1 when unknown (chunked, or HTTP/2 without content-length).
	Body    io.Reader
	BodyLen int64
	// Buffered is the whole body when the server already holds it in
	// memory (then Body reads the same bytes).
	Buffered []byte

	// Path and RawQuery are the normalized path and the query as received,
	// set by Serve; Host is the host name routes match (Host from the
	// route package).
	Path, RawQuery, Host string

	bodyRead   bool
	setCookies []string // from the identity source (a renewed session)
}

// BodyRead reports whether the core read the request body to its end; a
// server closes the connection after an answer that left a body unread.
func (r *Request) BodyRead() bool { return r.bodyRead || r.BodyLen == 0 }

// Context implements identity.Request.
func (r *Request) Context() context.Context { return r.Ctx }

// Header implements identity.Request.
func (r *Request) Header(name string) string { return r.Headers.Get(name) }

// HeaderValues implements identity.Request.
func (r *Request) HeaderValues(name string) []string { return r.Headers.Values(name) }

// HasHeader implements identity.Request: any variant of names.
func (r *Request) HasHeader(names []string) bool {
	found := false
	r.Headers.All(func(k, _ string) bool {
		for _, n := range names {
			if header.SameName(k, n) {
				found = true
				return false
			}
		}
		return true
	})
	return found
}

// Peer implements identity.Request.
func (r *Request) Peer() netip.Addr { return r.Addr }

// TLS implements identity.Request.
func (r *Request) TLS() *tls.ConnectionState { return r.TLSState }
