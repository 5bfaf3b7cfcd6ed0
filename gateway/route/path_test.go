package route

import (
	"errors"
	"testing"
)

func TestNormalize(t *testing.T) {
	for _, c := range []struct {
		in, want string
		err      error
	}{
		{"/", "/", nil},
		{"/a/b", "/a/b", nil},
		{"/a/b/", "/a/b/", nil},
		{"/x/../admin/users", "/admin/users", nil},
		{"/admin/../x", "/x", nil},
		{"//admin/users", "/admin/users", nil},
		{"/admin//users", "/admin/users", nil},
		{"/%2e%2e/admin/users", "/admin/users", nil},
		{"/%2E%2e/admin", "/admin", nil},
		{"/.%2e/admin", "/admin", nil},
		{"/a/%2e/b", "/a/b", nil},
		{"/a/./b", "/a/b", nil},
		{"/a/.", "/a/", nil},
		{"/a/..", "/", nil},
		{"/..", "/", nil},
		{"/../../a", "/a", nil},
		{"/a/b/../../..//c", "/c", nil},
		{"/.a/..b/...", "/.a/..b/...", nil},
		{"/%61dmin/users", "/admin/users", nil},
		{"/a%7eb", "/a~b", nil},
		{"/a%3fb", "/a%3Fb", nil},
		{"/a%c3%a9", "/a%C3%A9", nil},
		{"/a\xc3\xa9", "/a%C3%A9", nil},
		{"/a|b{c}", "/a%7Cb%7Bc%7D", nil},
		{"/a;b=c:d@e", "/a;b=c:d@e", nil},
		{"/admin%2Fusers", "", ErrEscapedSlash},
		{"/admin%2fusers", "", ErrEscapedSlash},
		{"/admin%5Cusers", "", ErrEscapedSlash},
		{"/admin\\users", "", ErrEscapedSlash},
		{"/a%2", "", ErrBadEscape},
		{"/a%zz", "", ErrBadEscape},
		{"/a b", "", ErrBadByte},
		{"/a\x00", "", ErrBadByte},
		{"/a#b", "", ErrBadByte},
		{"/a\tb", "", ErrBadByte},
		{"a/b", "", ErrBadTarget},
		{"", "", ErrBadTarget},
		{"*", "", ErrBadTarget},
	} {
		got, err := Normalize(c.in, false)
		if !errors.Is(err, c.err) || got != c.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q, %v", c.in, got, err, c.want, c.err)
		}
	}
	// Kept encoded slashes are no separators.
	for in, want := range map[string]string{
		"/admin%2Fusers": "/admin%2Fusers", "/a%2f..%2fb": "/a%2F..%2Fb", "/a\\b": "/a%5Cb", "/a/%2e%2e%5c": "/a/..%5C", "/a/%2e%2e/%5c": "/%5C",
	} {
		if got, err := Normalize(in, true); err != nil || got != want {
			t.Errorf("Normalize(%q, keep) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	for _, c := range []struct{ in, host, path, query string }{
		{"/a?b=1;2", "", "/a", "b=1;2"},
		{"/a?", "", "/a", ""},
		{"/a?x?y=%zz", "", "/a", "x?y=%zz"},
		{"http://h.example/a/b?q", "h.example", "/a/b", "q"},
		{"HTTPS://h:8443", "h:8443", "/", ""},
		{"http://h?q=1", "h", "/", "q=1"},
	} {
		h, p, q, err := SplitTarget(c.in)
		if err != nil || h != c.host || p != c.path || q != c.query {
			t.Errorf("SplitTarget(%q) = %q %q %q %v", c.in, h, p, q, err)
		}
	}
	for _, bad := range []string{"ftp://h/a", "http://u@h/a", "http:///a", "/a?b c", "/a?b#c", "h/a"} {
		if _, _, _, err := SplitTarget(bad); err == nil {
			t.Errorf("SplitTarget(%q) accepted", bad)
		}
	}
}

func TestHost(t *testing.T) {
	for in, want := range map[string]string{
		"App.Example.com": "app.example.com", "app.example.com.:8443": "app.example.com", "[::1]:80": "[::1]", "127.0.0.1:9": "127.0.0.1", "": "",
	} {
		if got, err := Host(in); err != nil || got != want {
			t.Errorf("Host(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"a b", "a/b", "u@h", "h:x", "[::1", "[::1]x", ".", "h\x00", "a..", "a..:80"} {
		if _, err := Host(bad); err == nil {
			t.Errorf("Host(%q) accepted", bad)
		}
	}
}
