package route

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"testing"
)

// checkCanonical fails the test unless p is in the form Normalize returns:
// an absolute path without empty (but a final one), "." or ".." segments,
// whose bytes stand for themselves or are percent-encodings with upper-case
// hex digits of bytes that need one; with keep, encoded slashes may stay.
func checkCanonical(t *testing.T, what, p string, keep bool) {
	t.Helper()
	if p == "" || p[0] != '/' {
		t.Fatalf("%s: %q is not an absolute path", what, p)
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		if s == "." || s == ".." || (s == "" && i < len(segs)-1) {
			t.Fatalf("%s: %q has the segment %q", what, p, s)
		}
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '%' {
			if k := class[c]; k != unreserved && k != raw {
				t.Fatalf("%s: %q has the raw byte %q", what, p, c)
			}
			continue
		}
		if i+2 >= len(p) || !strings.ContainsRune("0123456789ABCDEF", rune(p[i+1])) || !strings.ContainsRune("0123456789ABCDEF", rune(p[i+2])) {
			t.Fatalf("%s: %q has an escape that is not %%XX with upper-case hex at %d", what, p, i)
		}
		d := byte(unhex(p[i+1])<<4 | unhex(p[i+2]))
		if class[d] == unreserved {
			t.Fatalf("%s: %q keeps %%%02X, an unreserved byte, encoded", what, p, d)
		}
		if !keep && (d == '/' || d == '\\') {
			t.Fatalf("%s: %q keeps an encoded slash without keepEscapedSlashes", what, p)
		}
		i += 2
	}
	// The std server sends the path upstream as Path and RawPath; net/url
	// must write it back unchanged.
	dec, err := url.PathUnescape(p)
	if err != nil {
		t.Fatalf("%s: %q does not unescape: %v", what, p, err)
	}
	if got := (&url.URL{Path: dec, RawPath: p}).EscapedPath(); got != p {
		t.Fatalf("%s: %q is written upstream as %q", what, p, got)
	}
}

// FuzzNormalize checks the one path rule: a refused path gets one of the
// package's errors; an accepted path normalizes to a canonical path (see
// checkCanonical) that is a fixed point, that keeping encoded slashes does
// not change when there were none, and that means what the request did:
// decoded and cleaned as path.Clean does, both name the same path.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{
		"/", "/a/../b", "//x", "/%2e%2E/", "/a%2Fb", "/é", "/a/./b/../c/", "/x/../admin/users", "/.%2e/admin",
		"/%61dmin", "/a%3fb", "/a%c3%a9", "/a|b{c}", "/a;b=c:d@e", "/a\\b", "/a%2", "/a%zz", "/a b", "/a#b",
		"a/b", "", "*", "/.a/..b/...", "/a/.", "/a/..", "/a%2f..%2fb", "/a/%2e%2e%5c", "/%25", "/%7E%7e",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, keep bool) {
		out, err := Normalize(in, keep)
		if err != nil {
			if !errors.Is(err, ErrBadTarget) && !errors.Is(err, ErrBadEscape) && !errors.Is(err, ErrBadByte) && !errors.Is(err, ErrEscapedSlash) {
				t.Fatalf("Normalize(%q): unexpected error %v", in, err)
			}
			return
		}
		what := fmt.Sprintf("Normalize(%q, %v)", in, keep)
		checkCanonical(t, what, out, keep)
		if again, err := Normalize(out, keep); err != nil || again != out {
			t.Fatalf("%s = %q, which normalizes to %q, %v", what, out, again, err)
		}
		if keep {
			return
		}
		if kept, err := Normalize(in, true); err != nil || kept != out {
			t.Fatalf("%s = %q, but keeping escaped slashes gives %q, %v", what, out, kept, err)
		}
		din, err1 := url.PathUnescape(in)
		dout, err2 := url.PathUnescape(out)
		if err1 != nil || err2 != nil {
			t.Fatalf("%s = %q: unescape: %v, %v", what, out, err1, err2)
		}
		if path.Clean(din) != path.Clean(dout) {
			t.Fatalf("%s = %q: decoded and cleaned, %q became %q", what, out, path.Clean(din), path.Clean(dout))
		}
	})
}

// FuzzSplitTarget checks the split of a request target: a refused target
// gets one of the package's errors; an accepted origin-form target is its
// path and query put back together; an accepted absolute-form target has
// an http(s) scheme, a host without user info, and is scheme://host
// followed by its path and query.
func FuzzSplitTarget(f *testing.F) {
	for _, s := range []string{
		"/a?b=1;2", "/a?", "/a?x?y=%zz", "http://h.example/a/b?q", "HTTPS://h:8443", "http://h?q=1",
		"ftp://h/a", "http://u@h/a", "http:///a", "/a?b c", "/a?b#c", "h/a", "*", "", "/", "http://[::1]:80/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		host, p, query, err := SplitTarget(target)
		if err != nil {
			if !errors.Is(err, ErrBadTarget) && !errors.Is(err, errUnknownSchema) && !errors.Is(err, ErrBadByte) {
				t.Fatalf("SplitTarget(%q): unexpected error %v", target, err)
			}
			return
		}
		for i := 0; i < len(query); i++ {
			if c := query[i]; c <= ' ' || c == 0x7f || c == '#' {
				t.Fatalf("SplitTarget(%q): query %q has the byte %q", target, query, c)
			}
		}
		joined := p
		if strings.Contains(target, "?") {
			joined += "?" + query
		}
		if target == "" || target[0] == '/' {
			if host != "" || joined != target {
				t.Fatalf("SplitTarget(%q) = %q %q %q", target, host, p, query)
			}
			return
		}
		scheme, rest, _ := strings.Cut(target, "://")
		if !strings.EqualFold(scheme, "http") && !strings.EqualFold(scheme, "https") {
			t.Fatalf("SplitTarget(%q) accepted the scheme %q", target, scheme)
		}
		if host == "" || strings.ContainsAny(host, "@/?") || !strings.HasPrefix(p, "/") {
			t.Fatalf("SplitTarget(%q) = host %q, path %q", target, host, p)
		}
		tail := strings.TrimPrefix(rest, host)
		if !strings.HasPrefix(rest, host) || (tail != joined && !(p == "/" && (tail == "" || tail == strings.TrimPrefix(joined, "/")))) {
			t.Fatalf("SplitTarget(%q) = %q %q %q, which is not the target", target, host, p, query)
		}
	})
}

// FuzzHost checks the host rule: a refused host gets ErrBadHost; an
// accepted one is lower case, without port or final dot, a fixed point,
// the same whatever the (ASCII) letter case of the input, and the same
// with a port added.
func FuzzHost(f *testing.F) {
	for _, s := range []string{
		"App.Example.com", "app.example.com.:8443", "[::1]:80", "127.0.0.1:9", "", "a b", "a/b", "u@h", "h:x",
		"[::1", "[::1]x", ".", "h\x00", "a..", "[fe80::1%25eth0]:443", "h:", "xn--bcher-kva.example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		got, err := Host(h)
		up := []byte(h) // ASCII upper case: Host ignores only ASCII letter case
		for i, c := range up {
			if 'a' <= c && c <= 'z' {
				up[i] = c - 'a' + 'A'
			}
		}
		upper, uerr := Host(string(up))
		if (err == nil) != (uerr == nil) || upper != got {
			t.Fatalf("Host(%q) = %q, %v but Host(%q) = %q, %v", h, got, err, up, upper, uerr)
		}
		if err != nil {
			if !errors.Is(err, ErrBadHost) {
				t.Fatalf("Host(%q): unexpected error %v", h, err)
			}
			return
		}
		if (got == "") != (h == "") {
			t.Fatalf("Host(%q) = %q", h, got)
		}
		if h == "" {
			return
		}
		if got != strings.ToLower(got) || strings.HasSuffix(got, ".") {
			t.Fatalf("Host(%q) = %q, not lower case without a final dot", h, got)
		}
		if i := strings.LastIndexByte(got, ':'); i >= 0 && !strings.HasSuffix(got, "]") {
			t.Fatalf("Host(%q) = %q keeps a port", h, got)
		}
		if again, err := Host(got); err != nil || again != got {
			t.Fatalf("Host(%q) = %q, but Host of that is %q, %v", h, got, again, err)
		}
		if !strings.Contains(h, ":") || strings.HasSuffix(h, "]") {
			if withPort, err := Host(h + ":443"); err != nil || withPort != got {
				t.Fatalf("Host(%q) = %q, but with :443 %q, %v", h, got, withPort, err)
			}
		}
	})
}

// FuzzTable checks the route matcher against its definition: for a
// request (target and Host as received) it returns the most specific
// matching route (a host route before a host-less one, then the longest
// path prefix, then the first configured), where a route matches when its
// host is the request's (or it has none) and its path is "/", a prefix of
// the normalized path, or that path with a slash added; else the
// catch-all. The path sent upstream is canonical. Configured routes whose
// path or host is not in normalized form are refused with an error naming
// the route.
func FuzzTable(f *testing.F) {
	f.Add("/api/", "", "/api/v2/", "", "/", "app.example.com", "/api/v2/users?x=1", "app.example.com:443", true)
	f.Add("/api", "Api.Example.com", "/apix/", "", "/a/b/", "", "/api/../apix/y", "api.example.com", false)
	f.Add("/x/", "h", "/x/", "", "/x/", "h", "http://H.:80/x", "", true)
	f.Add("/a%2Fb/", "", "/a/", "", "/a/./b/", "", "/a%2fb/c", "", false)
	f.Add("/v1/", "h:80", "", "", "/..", "", "//v1//", "h", true)
	f.Fuzz(func(t *testing.T, p1, h1, p2, h2, p3, h3, target, authority string, catchAll bool) {
		var routes []*Route
		for i, spec := range [][2]string{{p1, h1}, {p2, h2}, {p3, h3}} {
			name := fmt.Sprintf("route %d", i+1)
			r := &Route{Path: spec[0], Host: spec[1], Upstream: fmt.Sprintf("http://up%d.example:8080/base%d/", i, i)}
			if err := r.Prepare(name, "X-Assertion", "headers"); err != nil {
				if !strings.HasPrefix(err.Error(), name+": ") {
					t.Fatalf("Prepare(%q, %q): %q does not name the route", spec[0], spec[1], err)
				}
				continue
			}
			if n, err := Normalize(r.Path, true); err != nil || n != r.Path {
				t.Fatalf("Prepare accepted the path %q, which normalizes to %q, %v", r.Path, n, err)
			}
			routes = append(routes, r)
		}
		var all *Route
		if catchAll {
			all = &Route{Upstream: "http://default.example/"}
			if err := all.Prepare("upstream", "X-Assertion", "headers"); err != nil {
				t.Fatal(err)
			}
		}
		config := append([]*Route(nil), routes...)
		table := NewTable(routes, all)

		h, raw, _, err := SplitTarget(target)
		if err != nil {
			return
		}
		if h == "" {
			h = authority
		}
		p, err := Normalize(raw, true)
		if err != nil {
			return
		}
		host, err := Host(h)
		if err != nil {
			return
		}
		var want *Route
		rank := func(r *Route) int {
			n := len(r.Path)
			if r.Host != "" {
				n += 1 << 20
			}
			return n
		}
		for _, r := range config {
			matches := (r.Host == "" || r.Host == host) && (r.Path == "/" || strings.HasPrefix(p, r.Path) || p+"/" == r.Path)
			if matches && (want == nil || rank(r) > rank(want)) {
				want = r
			}
		}
		if want == nil {
			want = all
		}
		got := table.Match(host, p)
		if got != want {
			t.Fatalf("request %q (Host %q) as %q %q: matched %s, want %s", target, authority, host, p, describe(got), describe(want))
		}
		if got != nil {
			up := got.UpstreamPath(p)
			checkCanonical(t, fmt.Sprintf("upstream path of %q on %s", p, describe(got)), up, true)
			if base := strings.TrimSuffix(got.Target.EscapedPath(), "/"); !strings.HasPrefix(up, base+"/") {
				t.Fatalf("upstream path %q of %s is not under the upstream's %q", up, describe(got), base)
			}
		}
	})
}

func describe(r *Route) string {
	if r == nil {
		return "no route"
	}
	return fmt.Sprintf("%s (host %q, path %q)", r.Name, r.Host, r.Path)
}
