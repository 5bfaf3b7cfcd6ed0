// Command testop is an OpenID Provider for kmsgate's tests of browser
// sign-in (the oidc-login identity source). It is built on
// github.com/zitadel/oidc/v3/pkg/op, an OpenID-certified provider library,
// and keeps everything in memory: a signing key (RS256) made at start, one
// confidential client (kmsgate / kmsgate-test-secret, redirect URIs
// http(s)://127.0.0.1:PORT/v1/oidc/callback and http(s)://localhost:PORT/…
// for any PORT), and two users:
//
//	alice / alice-pw  alice@example.com  "Alice Admin"  groups staff, admins
//	bob   / bob-pw    bob@example.com    "Bob Builder"  groups staff
//
// It offers discovery, the JWKS, the authorization endpoint with an HTML
// login page, the token endpoint (authorization_code with PKCE S256
// required; refresh_token, with refresh tokens for scope offline_access),
// userinfo, introspection, revocation and end_session (RP-initiated logout).
// A browser that signed in keeps a sign-in session at the provider (cookie
// testop_sso) until end_session, so a second sign-in needs no password
// unless prompt=login (-sso=false turns this off).
//
// Usage:
//
//	testop -listen 127.0.0.1:0 -addr-file FILE [-id-token-ttl 5m] [-access-token-ttl 5m]
//	       [-refresh-token-ttl 24h] [-fail-token] [-fail-refresh] [-control] [-sso=false]
//
// Once listening it prints its issuer URL (http://127.0.0.1:PORT) on stdout
// and writes it to the address file. GET /testop/stats answers JSON
// counters (logins, failed_logins, code_grants, refresh_grants,
// end_sessions, active_sessions). With -control, POST /testop/control
// (fail_token=true|false, fail_refresh=true|false) switches the failure
// knobs at run time; give it only to a provider a test starts for itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "testop:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	opts := defaultOptions()
	fs := flag.NewFlagSet("testop", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (loopback only)")
	addrFile := fs.String("addr-file", "", "file to write the issuer URL to once listening")
	fs.DurationVar(&opts.IDTokenTTL, "id-token-ttl", opts.IDTokenTTL, "ID token lifetime")
	fs.DurationVar(&opts.AccessTokenTTL, "access-token-ttl", opts.AccessTokenTTL, "access token lifetime")
	fs.DurationVar(&opts.RefreshTokenTTL, "refresh-token-ttl", opts.RefreshTokenTTL, "refresh token lifetime")
	fs.BoolVar(&opts.FailToken, "fail-token", false, "answer every token request 503 temporarily_unavailable")
	fs.BoolVar(&opts.FailRefresh, "fail-refresh", false, "answer every refresh grant 400 invalid_grant")
	fs.BoolVar(&opts.Control, "control", false, "serve POST /testop/control to switch the failure knobs")
	fs.BoolVar(&opts.SSO, "sso", true, "keep a sign-in session at the provider between authorization requests")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for name, d := range map[string]time.Duration{"-id-token-ttl": opts.IDTokenTTL, "-access-token-ttl": opts.AccessTokenTTL, "-refresh-token-ttl": opts.RefreshTokenTTL} {
		if d <= 0 {
			return fmt.Errorf("%s must be positive, not %s", name, d)
		}
	}
	if err := checkLoopback(*listen); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts.Logger = log
	slog.SetDefault(log)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	issuer := "http://" + ln.Addr().String()
	srv, err := newServer(issuer, opts)
	if err != nil {
		ln.Close()
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()

	if *addrFile != "" {
		if err := writeFileAtomic(*addrFile, issuer+"\n"); err != nil {
			hs.Close()
			return err
		}
	}
	fmt.Println(issuer)
	log.Info("test OpenID provider listening", "issuer", issuer)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case s := <-sig:
		log.Info("stopping", "signal", s.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// checkLoopback refuses listen addresses off the loopback interface: the
// provider's users and secret are public, so it must never be reachable
// from elsewhere.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-listen %q: only a loopback address (127.0.0.1, ::1) is allowed", addr)
	}
	return nil
}

// writeFileAtomic writes data to path through a temporary file and a
// rename, so a reader polling for the file never sees half of it.
func writeFileAtomic(path, data string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".testop-addr-*")
	if err != nil {
		return fmt.Errorf("address file: %w", err)
	}
	if _, err := tmp.WriteString(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("address file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("address file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("address file: %w", err)
	}
	return nil
}
