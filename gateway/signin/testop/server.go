package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// Paths the provider serves beside the library's endpoints.
const (
	loginPath     = "/login"
	loggedOutPath = "/logged-out"
	statsPath     = "/testop/stats"
	controlPath   = "/testop/control"
	sessionCookie = "testop_sso"
)

// options configure a provider.
type options struct {
	settings
	// FailToken makes the token endpoint answer 503 temporarily_unavailable.
	FailToken bool
	// FailRefresh makes every refresh grant answer 400 invalid_grant.
	FailRefresh bool
	// Control serves POST /testop/control to switch the two knobs above at
	// run time (only for a provider a test started for itself).
	Control bool
	Logger  *slog.Logger
}

func defaultOptions() options {
	return options{settings: settings{
		IDTokenTTL:      5 * time.Minute,
		AccessTokenTTL:  5 * time.Minute,
		RefreshTokenTTL: 24 * time.Hour,
		CodeTTL:         10 * time.Minute,
		SSO:             true,
	}}
}

// server is the test OpenID Provider: the library's endpoints plus a login
// page, a signed-out page and the test knobs.
type server struct {
	issuer    string
	store     *storage
	provider  *op.Provider
	failToken atomic.Bool
	opts      options
	log       *slog.Logger
	handler   http.Handler
}

// newServer builds a provider whose issuer is issuer (http://127.0.0.1:PORT).
func newServer(issuer string, opts options) (*server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	store, err := newStorage(opts.settings)
	if err != nil {
		return nil, err
	}
	store.failRefresh = opts.FailRefresh
	var cryptoKey [32]byte
	_, _ = rand.Read(cryptoKey[:])
	config := &op.Config{
		CryptoKey:                cryptoKey,
		CryptoKeyId:              "testop-at",
		DefaultLogoutRedirectURI: loggedOutPath,
		CodeMethodS256:           true,
		AuthMethodPost:           true,
		GrantTypeRefreshToken:    true,
		SupportedUILocales:       []language.Tag{language.English},
		SupportedScopes:          []string{oidc.ScopeOpenID, oidc.ScopeProfile, oidc.ScopeEmail, oidc.ScopeOfflineAccess},
		SupportedClaims: []string{"sub", "aud", "exp", "iat", "iss", "auth_time", "nonce", "acr", "amr", "at_hash", "c_hash",
			"email", "email_verified", "name", "preferred_username", "groups"},
	}
	provider, err := op.NewProvider(config, store, op.StaticIssuer(issuer), op.WithAllowInsecure())
	if err != nil {
		return nil, fmt.Errorf("testop: new provider: %w", err)
	}
	s := &server{issuer: issuer, store: store, provider: provider, opts: opts, log: opts.Logger}
	s.failToken.Store(opts.FailToken)

	mux := http.NewServeMux()
	interceptor := op.NewIssuerInterceptor(provider.IssuerFromRequest)
	mux.Handle(loginPath, interceptor.Handler(http.HandlerFunc(s.login)))
	mux.HandleFunc(loggedOutPath, s.loggedOut)
	mux.HandleFunc(statsPath, s.stats)
	if opts.Control {
		mux.HandleFunc(controlPath, s.control)
	}
	mux.Handle("/", provider)
	s.handler = s.middleware(mux)
	return s, nil
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// statusWriter remembers the status and, on a redirect out of the
// end_session endpoint, expires the sign-in session cookie.
type statusWriter struct {
	http.ResponseWriter
	status     int
	endSession bool
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		if w.endSession && code == http.StatusFound {
			http.SetCookie(w.ResponseWriter, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// middleware puts the browser's sign-in session into the request context,
// applies the fail-token knob and logs each request (method, path, status:
// never the query, which carries codes, nor any token).
func (s *server) middleware(next http.Handler) http.Handler {
	token := s.provider.TokenEndpoint().Relative()
	endSession := s.provider.EndSessionEndpoint().Relative()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, endSession: r.URL.Path == endSession}
		if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
			r = r.WithContext(withSession(r.Context(), c.Value))
		}
		if r.URL.Path == token && s.failToken.Load() {
			sw.Header().Set("Content-Type", "application/json")
			sw.Header().Set("Cache-Control", "no-store")
			sw.WriteHeader(http.StatusServiceUnavailable)
			_, _ = sw.Write([]byte(`{"error":"temporarily_unavailable","error_description":"the token endpoint is down (fail-token test knob)"}`))
		} else {
			next.ServeHTTP(sw, r)
		}
		s.log.Info("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "duration", time.Since(start))
	})
}

var loginPage = template.Must(template.New("login").Parse(`<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in - kmsgate test provider</title></head>
<body>
<h1>Sign in</h1>
<p>to continue to <b>{{.ClientID}}</b></p>
{{if .Error}}<p id="error" role="alert" style="color:#b00">{{.Error}}</p>{{end}}
<form method="post" action="{{.Action}}">
<input type="hidden" name="authRequestID" value="{{.ID}}">
<p><label for="username">User name</label><br><input id="username" name="username" type="text" autocomplete="username" value="{{.Username}}" autofocus></p>
<p><label for="password">Password</label><br><input id="password" name="password" type="password" autocomplete="current-password"></p>
<p><button id="submit" type="submit">Sign in</button></p>
</form>
</body>
</html>
`))

type loginData struct {
	ID, ClientID, Action, Username, Error string
}

// login serves the sign-in page of an authorization request (GET) and checks
// the user name and password posted to it (POST). A browser with a live
// sign-in session at the provider skips the form unless prompt=login.
func (s *server) login(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return
	}
	id := r.Form.Get("authRequestID")
	req, ok := s.store.authRequest(id)
	if !ok {
		http.Error(w, "unknown or expired sign-in request: start again from the application", http.StatusBadRequest)
		return
	}
	data := loginData{ID: id, ClientID: req.clientID, Action: loginPath}
	switch r.Method {
	case http.MethodGet:
		if sub, ok := s.ssoUser(r); ok && !slices.Contains(req.prompt, oidc.PromptLogin) {
			s.finish(w, r, id, sub, false)
			return
		}
		if slices.Contains(req.prompt, oidc.PromptNone) {
			op.AuthRequestError(w, r, &req, oidc.ErrLoginRequired(), s.provider)
			return
		}
		s.renderLogin(w, data, http.StatusOK)
	case http.MethodPost:
		username := r.PostForm.Get("username")
		u, ok := userByName(username)
		if !ok || r.PostForm.Get("password") != u.Password {
			s.store.countLogin(false)
			data.Username, data.Error = username, "Wrong user name or password."
			s.renderLogin(w, data, http.StatusOK)
			return
		}
		s.store.countLogin(true)
		s.finish(w, r, id, u.Sub, true)
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func (s *server) renderLogin(w http.ResponseWriter, data loginData, status int) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := loginPage.Execute(w, data); err != nil {
		s.log.Error("render login page", "err", err)
	}
}

// ssoUser returns the user of the browser's live sign-in session.
func (s *server) ssoUser(r *http.Request) (string, bool) {
	if !s.opts.SSO {
		return "", false
	}
	sid := sessionFromContext(r.Context())
	if sid == "" {
		return "", false
	}
	return s.store.sessionUser(sid)
}

// finish marks the request signed in by sub and sends the browser on to
// the library's callback, which redirects to the client with a code.
func (s *server) finish(w http.ResponseWriter, r *http.Request, id, sub string, newSession bool) {
	if err := s.store.completeAuthRequest(id, sub); err != nil {
		http.Error(w, "sign-in request already used or expired", http.StatusBadRequest)
		return
	}
	if newSession && s.opts.SSO {
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: s.store.newSession(sub), Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
	}
	http.Redirect(w, r, op.AuthCallbackURL(s.provider)(r.Context(), id), http.StatusFound)
}

func (s *server) loggedOut(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write([]byte("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signed out</title></head><body><h1>Signed out</h1></body></html>\n"))
}

// stats answers what the provider has seen (sign-ins, grants, logouts).
func (s *server) stats(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(s.store.snapshot())
}

// control switches the failure knobs: POST fail_token=true|false,
// fail_refresh=true|false.
func (s *server) control(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return
	}
	knobs := []struct {
		name string
		set  func(bool)
	}{{"fail_token", s.failToken.Store}, {"fail_refresh", s.store.setFailRefresh}}
	var apply []func()
	for _, k := range knobs {
		v := r.PostForm.Get(k.name)
		if v == "" {
			continue
		}
		on, err := strconv.ParseBool(v)
		if err != nil {
			http.Error(w, fmt.Sprintf("%s: %q is not true or false", k.name, v), http.StatusBadRequest)
			return
		}
		set := k.set
		apply = append(apply, func() { set(on) })
	}
	for _, f := range apply {
		f()
	}
	w.WriteHeader(http.StatusNoContent)
}
