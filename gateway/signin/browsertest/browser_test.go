package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// chromium returns the browser to drive: $KMSGATE_TEST_CHROMIUM (set by
// scripts/test.d/55-browser.sh) or Debian's /usr/bin/chromium.
func chromium(t *testing.T) string {
	t.Helper()
	path := os.Getenv("KMSGATE_TEST_CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := os.Stat(path); err != nil {
		missing(t, "no chromium at %s (scripts/test.d/55-browser.sh installs Debian's chromium)", path)
	}
	return path
}

// newBrowser starts a headless chromium with a fresh profile and the flags
// this machine's closed network needs, and returns its context.
func newBrowser(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	// The first Do starts the browser; its context lives as long as bctx.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// stepTimeout bounds one step of the test in the browser.
const stepTimeout = 30 * time.Second

// run runs browser actions as one named step, failing the test with what
// the page shows when they fail.
func run(t *testing.T, ctx context.Context, step string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	start := time.Now()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("%s: %v\n%s", step, err, describe(ctx))
	}
	t.Logf("%s: %s", step, time.Since(start).Round(time.Millisecond))
}

// get runs one action that reads a value.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		t.Fatalf("read %s: %v\n%s", what, err, describe(ctx))
	}
	return v
}

// describe tells where the browser is and what it shows.
func describe(ctx context.Context) string {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(dctx, chromedp.Location())
	body, _ := chromedp.Run(dctx, chromedp.OuterHTML(chromedp.CSS("body")))
	if len(body) > 2000 {
		body = body[:2000] + "…"
	}
	return fmt.Sprintf("browser at %s:\n%s", loc, body)
}

// waitURL waits until the page has loaded at an address that starts with
// prefix. It checks every 50 ms until the step's deadline, and rides over
// the errors of a check that a navigation interrupts (the page is being
// redirected through the provider and the gateway).
func waitURL(prefix string) chromedp.Action[chromedp.Void] {
	js := fmt.Sprintf("document.readyState === 'complete' && location.href.startsWith(%q)", prefix)
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var last error
		for {
			ok, err := chromedp.Evaluate[bool](js)(ctx, t)
			if err == nil && ok {
				return chromedp.Void{}, nil
			}
			if err != nil {
				last = err
			}
			select {
			case <-ctx.Done():
				return chromedp.Void{}, fmt.Errorf("waiting for %s: %w (last check: %v)", prefix, ctx.Err(), last)
			case <-tick.C:
			}
		}
	}
}

// signInForm fills and submits the provider's login form.
func signInForm(user, password string) chromedp.Action[chromedp.Void] {
	return chromedp.Steps(
		chromedp.WaitVisible(chromedp.CSS("#username")),
		chromedp.Clear(chromedp.CSS("#username")),
		chromedp.SendKeys(chromedp.CSS("#username"), user),
		chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.Click(chromedp.CSS("#submit")),
	)
}

// appClaims are what the app page shows.
type appClaims struct {
	loc, path, sub, email, name, groups, iss, aud string
}

// readApp waits for the app page and reads it.
func readApp(t *testing.T, ctx context.Context) appClaims {
	t.Helper()
	run(t, ctx, "wait for the app page", chromedp.WaitVisible(chromedp.CSS("#claims")))
	text := func(id string) string { return get(t, ctx, id, chromedp.Text(chromedp.CSS(id))) }
	return appClaims{
		loc:  get(t, ctx, "location", chromedp.Location()),
		path: text("#path"), sub: text("#sub"), email: text("#email"), name: text("#name"),
		groups: text("#groups"), iss: text("#iss"), aud: text("#aud"),
	}
}

// cookiesOf reads the browser's cookies for url.
func cookiesOf(t *testing.T, ctx context.Context, url string) []*network.Cookie {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	res, err := chromedp.Call(sctx, network.GetCookies, network.GetCookiesParams{URLs: []string{url}})
	if err != nil {
		t.Fatalf("read cookies: %v", err)
	}
	return res.Cookies
}

// providerStats reads the test provider's counters.
type providerStats struct {
	Logins         int `json:"logins"`
	FailedLogins   int `json:"failed_logins"`
	CodeGrants     int `json:"code_grants"`
	RefreshGrants  int `json:"refresh_grants"`
	EndSessions    int `json:"end_sessions"`
	ActiveSessions int `json:"active_sessions"`
}

func stats(t *testing.T, issuer string) providerStats {
	t.Helper()
	resp, err := http.Get(issuer + "/testop/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s providerStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("provider stats: %v", err)
	}
	return s
}

const browserConfig = `routes:
  - name: admin
    path: /admin/
    upstream: %s
    identity: oidc-login
    policy: {allow: {groups: {has: admins}}}
`

func TestBrowserSignIn(t *testing.T) {
	chromium(t) // skip (or fail under KMSGATE_REQUIRE_SERVERS) before building anything
	began := time.Now()
	dir := workDir(t)
	issuer := startProvider(t, dir)
	a := listenApp(t)
	g := startGateway(t, dir, issuer, a.URL, fmt.Sprintf(browserConfig, a.URL))
	a.serve(t, g.Base, g.Direct)
	t.Logf("provider, gateway and app up: %s", time.Since(began).Round(time.Millisecond))

	// Not a browser: 401, never a redirect.
	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for accept, want := range map[string]int{"application/json": http.StatusUnauthorized, "text/html,application/xhtml+xml": http.StatusFound} {
		req, _ := http.NewRequest(http.MethodGet, g.Direct+"/hello", nil)
		req.Header.Set("Accept", accept)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET /hello with Accept %q and no session: %d, want %d", accept, resp.StatusCode, want)
		}
		if want == http.StatusFound && !strings.HasPrefix(resp.Header.Get("Location"), issuer+"/authorize?") {
			t.Errorf("browser without session sent to %q, want the provider's authorization endpoint", resp.Header.Get("Location"))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b := newBrowser(t, ctx)
	t.Logf("chromium started: %s", time.Since(began).Round(time.Millisecond))

	// 1. The app sends the browser to the provider's login page.
	run(t, b, "open the app: the provider's login page",
		chromedp.Navigate(g.Base+"/hello?x=1"),
		chromedp.WaitVisible(chromedp.CSS("#username")))
	if loc := get(t, b, "location", chromedp.Location()); !strings.HasPrefix(loc, issuer+"/login?") {
		t.Fatalf("login page at %s, want %s/login", loc, issuer)
	}

	// 2. A wrong password shows the form again with an error.
	run(t, b, "wrong password", signInForm("alice", "wrong"), chromedp.WaitVisible(chromedp.CSS("#error")))
	if e := get(t, b, "error", chromedp.Text(chromedp.CSS("#error"))); !strings.Contains(e, "Wrong user name or password") {
		t.Errorf("error shown: %q", e)
	}

	// 3. alice signs in and lands where she was going, on the app, which
	// verified the gateway's assertion.
	run(t, b, "sign in as alice", signInForm("alice", "alice-pw"))
	alice := readApp(t, b)
	if alice.loc != g.Base+"/hello?x=1" || alice.path != "/hello?x=1" {
		t.Errorf("after sign-in at %s (app saw %s), want %s/hello?x=1", alice.loc, alice.path, g.Base)
	}
	wantAlice := appClaims{loc: alice.loc, path: alice.path, sub: "user-alice", email: "alice@example.com", name: "Alice Admin", groups: "staff,admins", iss: g.Base, aud: "[127.0.0.1]"}
	if alice != wantAlice {
		t.Errorf("app page shows %+v, want %+v", alice, wantAlice)
	}

	// The session cookie: HttpOnly, SameSite=Lax, Secure (http://localhost
	// is a secure context, so chromium keeps it).
	cookies := cookiesOf(t, b, g.Base+"/")
	session := findCookie(cookies, "_kmsgate")
	if session == nil {
		t.Fatalf("no _kmsgate session cookie after sign-in; cookies: %s", cookieNames(cookies))
	}
	if !session.HTTPOnly || !session.Secure || session.SameSite != network.CookieSameSiteLax {
		t.Errorf("session cookie HttpOnly=%v Secure=%v SameSite=%q, want true, true, Lax", session.HTTPOnly, session.Secure, session.SameSite)
	}
	if findCookie(cookies, "_kmsgate_auth") != nil {
		t.Errorf("the sign-in state cookie outlived the callback")
	}

	// 4. alice is in group admins: the admin route lets her in.
	run(t, b, "alice opens /admin/", chromedp.Navigate(g.Base+"/admin/"))
	if aliceAdmin := readApp(t, b); aliceAdmin.sub != "user-alice" || aliceAdmin.path != "/admin/" {
		t.Errorf("alice on /admin/: %+v", aliceAdmin)
	}

	// 5. Logout ends the session here and at the provider, which returns the
	// browser to the gateway's root, which sends it to sign in again.
	run(t, b, "logout",
		chromedp.Navigate(g.Base+"/v1/oidc/logout"),
		waitURL(issuer+"/login?"),
		chromedp.WaitVisible(chromedp.CSS("#username")))
	if cookies := cookiesOf(t, b, g.Base+"/"); findCookie(cookies, "_kmsgate") != nil {
		t.Errorf("session cookie still set after logout")
	}
	if s := stats(t, issuer); s.EndSessions != 1 || s.ActiveSessions != 0 {
		t.Errorf("provider after logout: %+v, want one end_session and no active session (RP-initiated logout)", s)
	}

	// 6. The next visit needs the password again (no silent sign-in).
	run(t, b, "after logout: the login page again",
		chromedp.Navigate(g.Base+"/"),
		waitURL(issuer+"/login?"),
		chromedp.WaitVisible(chromedp.CSS("#username")))

	// 7. bob is not in admins: the admin route answers the 403 page, and the
	// app never sees the request.
	run(t, b, "bob on /admin/: 403",
		chromedp.Navigate(g.Base+"/admin/"),
		waitURL(issuer+"/login?"),
		signInForm("bob", "bob-pw"),
		waitURL(g.Base+"/admin/"))
	if page := get(t, b, "page", chromedp.OuterHTML(chromedp.CSS("html"))); !strings.Contains(page, "<h1>403 Forbidden</h1>") {
		t.Errorf("bob on /admin/ sees:\n%s", page)
	}

	// 8. bob's session is good where the default policy lets any user in.
	run(t, b, "bob opens /", chromedp.Navigate(g.Base+"/"))
	if bob := readApp(t, b); bob.sub != "user-bob" || bob.email != "bob@example.com" || bob.groups != "staff" || bob.name != "Bob Builder" {
		t.Errorf("bob on /: %+v", bob)
	}

	// What reached the app: only verified requests, bob never on /admin/,
	// and none of the gateway's cookies or the provider's tokens.
	for _, r := range a.requests() {
		if r.Claims == nil {
			t.Errorf("app got %s without a valid assertion", r.Path)
			continue
		}
		if strings.HasPrefix(r.Path, "/admin/") && r.Claims.Subject != "user-alice" {
			t.Errorf("%s reached the app on %s", r.Claims.Subject, r.Path)
		}
		for name, vals := range r.Headers {
			if http.CanonicalHeaderKey(name) == "X-Kmsgate-Jwt-Assertion" {
				continue
			}
			for _, v := range vals {
				if strings.Contains(v, "_kmsgate") || strings.Contains(v, "eyJ") {
					t.Errorf("app got %s: %s: %.60q… (a session cookie or a token)", r.Path, name, v)
				}
			}
		}
	}
	if s := stats(t, issuer); s.Logins != 2 || s.FailedLogins != 1 || s.CodeGrants != 2 {
		t.Errorf("provider counters %+v: want 2 logins, 1 failed, 2 code grants", s)
	}
	t.Logf("browser test total: %s", time.Since(began).Round(time.Millisecond))
}

func findCookie(cs []*network.Cookie, name string) *network.Cookie {
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func cookieNames(cs []*network.Cookie) string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return strings.Join(n, ", ")
}

// control switches the test provider's failure knobs (-control).
func control(t *testing.T, issuer string, form url.Values) {
	t.Helper()
	resp, err := http.PostForm(issuer+"/testop/control", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("provider control %v: %s", form, resp.Status)
	}
}

// TestBrowserReturnAndRefresh signs in through /v1/oidc/login with return
// addresses that must not leave the gateway, then lets the session refresh
// (the provider's ID tokens live 4 s; the gateway renews one in its last
// half), then makes the token endpoint fail at sign-in.
func TestBrowserReturnAndRefresh(t *testing.T) {
	chromium(t)
	dir := workDir(t)
	issuer := startProvider(t, dir, "-id-token-ttl", "4s", "-control")
	a := listenApp(t)
	g := startGateway(t, dir, issuer, a.URL, fmt.Sprintf(browserConfig, a.URL))
	a.serve(t, g.Base, g.Direct)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b := newBrowser(t, ctx)

	login := func(rd string) string { return g.Base + "/v1/oidc/login?rd=" + url.QueryEscape(rd) }

	// A return path on the gateway is kept.
	run(t, b, "login with rd=/ok/path?q=1", chromedp.Navigate(login("/ok/path?q=1")), signInForm("alice", "alice-pw"))
	if got := readApp(t, b); got.loc != g.Base+"/ok/path?q=1" || got.sub != "user-alice" {
		t.Fatalf("after login with rd=/ok/path?q=1: %+v", got)
	}
	// Anything that could leave the host returns to "/". The provider's
	// sign-in session makes these sign-ins silent.
	for _, rd := range []string{"//evil.example/x", "https://evil.example/", `/\evil.example`, "/\t/evil.example", "///evil.example", "javascript:alert(1)", "http:/evil.example"} {
		run(t, b, "login with rd="+rd, chromedp.Navigate(login(rd)), waitURL(g.Base+"/"))
		if got := readApp(t, b); got.loc != g.Base+"/" {
			t.Errorf("login with rd=%s ended at %s, want %s/", rd, got.loc, g.Base)
		}
	}

	// Refresh: once the ID token is in its last half (2 s of the provider's
	// real clock), a request renews it and the user stays signed in. The
	// wait is for another process's clock: polled, bounded.
	before := stats(t, issuer)
	after := before
	for i := 0; i < 40 && after.RefreshGrants == before.RefreshGrants; i++ {
		time.Sleep(250 * time.Millisecond)
		run(t, b, "request that may refresh", chromedp.Navigate(g.Base+"/r1"))
		after = stats(t, issuer)
	}
	if got := readApp(t, b); got.sub != "user-alice" || got.path != "/r1" {
		t.Errorf("after refresh: %+v", got)
	}
	if after.RefreshGrants <= before.RefreshGrants || after.CodeGrants != before.CodeGrants {
		t.Errorf("provider before %+v, after %+v: want a refresh grant and no new sign-in", before, after)
	}

	// The token endpoint down at sign-in: an error page at the callback, no
	// session, no redirect loop.
	run(t, b, "logout", chromedp.Navigate(g.Base+"/v1/oidc/logout"), waitURL(issuer+"/login?"))
	control(t, issuer, url.Values{"fail_token": {"true"}})
	before = stats(t, issuer)
	run(t, b, "sign in while the token endpoint is down",
		signInForm("alice", "alice-pw"),
		waitURL(g.Base+"/v1/oidc/callback"))
	h1 := get(t, b, "error page", chromedp.Text(chromedp.CSS("h1")))
	t.Logf("callback with the token endpoint down answers a page headed %q", h1)
	if h1 != "503 Service Unavailable" {
		t.Errorf("callback with the token endpoint down: page %q, want 503 Service Unavailable", h1)
	}
	if c := findCookie(cookiesOf(t, b, g.Base+"/"), "_kmsgate"); c != nil {
		t.Errorf("a session cookie was set although the code exchange failed")
	}
	if after := stats(t, issuer); after.Logins != before.Logins+1 {
		t.Errorf("provider before %+v, after %+v: want exactly one sign-in (no loop)", before, after)
	}
	control(t, issuer, url.Values{"fail_token": {"false"}})
}

// TestBrowserRefusedRefresh makes the provider refuse to renew a session
// it has just issued (ID tokens of 4 s, renewed in their last half): the
// gateway answers a 503 page instead of sending the browser to sign in,
// which would make the same short session again and loop through the
// provider. (An older session whose refresh is refused signs in again:
// TestRefreshRefused in gateway/signin, on a fake clock.)
func TestBrowserRefusedRefresh(t *testing.T) {
	chromium(t)
	dir := workDir(t)
	issuer := startProvider(t, dir, "-id-token-ttl", "4s", "-control")
	a := listenApp(t)
	g := startGateway(t, dir, issuer, a.URL, fmt.Sprintf(browserConfig, a.URL))
	a.serve(t, g.Base, g.Direct)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b := newBrowser(t, ctx)

	run(t, b, "sign in", chromedp.Navigate(g.Base+"/"), signInForm("alice", "alice-pw"))
	if got := readApp(t, b); got.sub != "user-alice" {
		t.Fatalf("signed in: %+v", got)
	}
	control(t, issuer, url.Values{"fail_refresh": {"true"}})
	before := stats(t, issuer)
	// Polled until the token is due (2 s of the provider's real clock) and
	// its refresh refused.
	h1 := ""
	for i := 0; i < 40 && h1 != "503 Service Unavailable"; i++ {
		time.Sleep(250 * time.Millisecond)
		run(t, b, "request whose refresh may be refused", chromedp.Navigate(g.Base+"/r2"))
		h1 = get(t, b, "heading", chromedp.Evaluate[string](`(document.querySelector("h1") || {}).textContent || ""`))
	}
	if h1 != "503 Service Unavailable" {
		t.Errorf("after a refused refresh of a new session: page %q, want 503 Service Unavailable\n%s", h1, describe(b))
	}
	if after := stats(t, issuer); after.CodeGrants != before.CodeGrants || after.Logins != before.Logins {
		t.Errorf("provider before %+v, after %+v: want no new sign-in (no loop)", before, after)
	}
}
