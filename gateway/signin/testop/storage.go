package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// user is one account of the test provider.
type user struct {
	Sub      string
	Username string
	Password string
	Email    string
	Name     string
	Groups   []string
}

// testUsers are the provider's accounts; the gateway's tests rely on these
// names, passwords, emails and groups.
var testUsers = []user{
	{Sub: "user-alice", Username: "alice", Password: "alice-pw", Email: "alice@example.com", Name: "Alice Admin", Groups: []string{"staff", "admins"}},
	{Sub: "user-bob", Username: "bob", Password: "bob-pw", Email: "bob@example.com", Name: "Bob Builder", Groups: []string{"staff"}},
}

func userByName(name string) (user, bool) {
	for _, u := range testUsers {
		if u.Username == name {
			return u, true
		}
	}
	return user{}, false
}

func userBySub(sub string) (user, bool) {
	for _, u := range testUsers {
		if u.Sub == sub {
			return u, true
		}
	}
	return user{}, false
}

// authRequest is one pending authorization request (op.AuthRequest).
type authRequest struct {
	id            string
	created       time.Time
	clientID      string
	redirectURI   string
	scopes        []string
	state         string
	nonce         string
	responseType  oidc.ResponseType
	responseMode  oidc.ResponseMode
	prompt        []string
	codeChallenge *oidc.CodeChallenge

	// Set once the user has signed in.
	sub      string
	authTime time.Time
	done     bool
}

func (a *authRequest) GetID() string                         { return a.id }
func (a *authRequest) GetACR() string                        { return "" }
func (a *authRequest) GetAMR() []string                      { return []string{"pwd"} }
func (a *authRequest) GetAudience() []string                 { return []string{a.clientID} }
func (a *authRequest) GetAuthTime() time.Time                { return a.authTime }
func (a *authRequest) GetClientID() string                   { return a.clientID }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge { return a.codeChallenge }
func (a *authRequest) GetNonce() string                      { return a.nonce }
func (a *authRequest) GetRedirectURI() string                { return a.redirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType    { return a.responseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode    { return a.responseMode }
func (a *authRequest) GetScopes() []string                   { return a.scopes }
func (a *authRequest) GetState() string                      { return a.state }
func (a *authRequest) GetSubject() string                    { return a.sub }
func (a *authRequest) Done() bool                            { return a.done }

// accessToken is an issued access token, known by its id.
type accessToken struct {
	id           string
	clientID     string
	sub          string
	scopes       []string
	audience     []string
	expires      time.Time
	refreshToken string
}

// refreshToken is an issued refresh token; it is also the
// op.RefreshTokenRequest of a refresh grant that presents it.
type refreshToken struct {
	token       string
	clientID    string
	sub         string
	scopes      []string
	audience    []string
	authTime    time.Time
	expires     time.Time
	accessToken string
}

func (r *refreshToken) GetAMR() []string                 { return []string{"pwd"} }
func (r *refreshToken) GetAudience() []string            { return r.audience }
func (r *refreshToken) GetAuthTime() time.Time           { return r.authTime }
func (r *refreshToken) GetClientID() string              { return r.clientID }
func (r *refreshToken) GetScopes() []string              { return r.scopes }
func (r *refreshToken) GetSubject() string               { return r.sub }
func (r *refreshToken) SetCurrentScopes(scopes []string) { r.scopes = scopes }

// signingKey is the provider's RS256 key, generated at start.
type signingKey struct {
	id  string
	key *rsa.PrivateKey
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *signingKey) Key() any                                    { return k.key }
func (k *signingKey) ID() string                                  { return k.id }

// publicKey is the public half of signingKey, as published in the JWKS.
type publicKey struct{ k *signingKey }

func (p publicKey) ID() string                         { return p.k.id }
func (p publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (p publicKey) Use() string                        { return "sig" }
func (p publicKey) Key() any                           { return &p.k.key.PublicKey }

// settings are the provider's lifetimes and test knobs.
type settings struct {
	IDTokenTTL      time.Duration
	AccessTokenTTL  time.Duration
	RefreshTokenTTL time.Duration
	CodeTTL         time.Duration
	// SSO keeps a sign-in session at the provider (a cookie), so a second
	// authorization request of the same browser needs no password.
	SSO bool
}

// storage is the provider's in-memory op.Storage.
type storage struct {
	cfg    settings
	client *client
	key    *signingKey
	now    func() time.Time

	mu            sync.Mutex
	authRequests  map[string]*authRequest
	codes         map[string]string // code -> auth request id
	accessTokens  map[string]*accessToken
	refreshTokens map[string]*refreshToken
	sessions      map[string]string // SSO session id -> sub
	failRefresh   bool
	stats         counters
}

// counters tell a test what the provider saw.
type counters struct {
	Logins         int `json:"logins"`
	FailedLogins   int `json:"failed_logins"`
	CodeGrants     int `json:"code_grants"`
	RefreshGrants  int `json:"refresh_grants"`
	EndSessions    int `json:"end_sessions"`
	ActiveSessions int `json:"active_sessions"`
}

var (
	_ op.Storage                        = (*storage)(nil)
	_ op.CanSetUserinfoFromRequest      = (*storage)(nil)
	_ op.CanTerminateSessionFromRequest = (*storage)(nil)
)

func newStorage(cfg settings) (*storage, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("testop: generate signing key: %w", err)
	}
	return &storage{
		cfg:           cfg,
		client:        newKmsgateClient(cfg.IDTokenTTL),
		key:           &signingKey{id: randomID(), key: key},
		now:           time.Now,
		authRequests:  map[string]*authRequest{},
		codes:         map[string]string{},
		accessTokens:  map[string]*accessToken{},
		refreshTokens: map[string]*refreshToken{},
		sessions:      map[string]string{},
	}, nil
}

// randomID returns 32 random bytes, base64url.
func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// errNotFound is returned for unknown or expired requests, codes and tokens.
var errNotFound = errors.New("not found or expired")

// CreateAuthRequest stores a validated authorization request. PKCE with S256
// is required of every client.
func (s *storage) CreateAuthRequest(ctx context.Context, req *oidc.AuthRequest, sub string) (op.AuthRequest, error) {
	if req.CodeChallenge == "" || req.CodeChallengeMethod != oidc.CodeChallengeMethodS256 {
		return nil, oidc.ErrInvalidRequest().WithDescription("PKCE with code_challenge_method=S256 is required")
	}
	a := &authRequest{
		id:            randomID(),
		created:       s.now(),
		clientID:      req.ClientID,
		redirectURI:   req.RedirectURI,
		scopes:        slices.Clone(req.Scopes),
		state:         req.State,
		nonce:         req.Nonce,
		responseType:  req.ResponseType,
		responseMode:  req.ResponseMode,
		prompt:        slices.Clone(req.Prompt),
		codeChallenge: &oidc.CodeChallenge{Challenge: req.CodeChallenge, Method: req.CodeChallengeMethod},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authRequests[a.id] = a
	return a, nil
}

func (s *storage) AuthRequestByID(ctx context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authRequests[id]
	if !ok || s.now().Sub(a.created) > s.cfg.CodeTTL {
		return nil, fmt.Errorf("auth request: %w", errNotFound)
	}
	return a, nil
}

// authRequest returns a copy of the pending request id, for the login page.
func (s *storage) authRequest(id string) (authRequest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authRequests[id]
	if !ok || a.done || s.now().Sub(a.created) > s.cfg.CodeTTL {
		return authRequest{}, false
	}
	return *a, true
}

// completeAuthRequest marks request id as signed in by sub.
func (s *storage) completeAuthRequest(id, sub string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authRequests[id]
	if !ok || a.done {
		return fmt.Errorf("auth request: %w", errNotFound)
	}
	a.sub, a.authTime, a.done = sub, s.now(), true
	return nil
}

func (s *storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	id, ok := s.codes[code]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("code: %w", errNotFound)
	}
	return s.AuthRequestByID(ctx, id)
}

func (s *storage) SaveAuthCode(ctx context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest forgets a request and its code once the code has been
// exchanged, so a replayed code is refused.
func (s *storage) DeleteAuthRequest(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.authRequests, id)
	for code, rid := range s.codes {
		if rid == id {
			delete(s.codes, code)
		}
	}
	return nil
}

func clientOf(req op.TokenRequest) string {
	switch r := req.(type) {
	case *authRequest:
		return r.clientID
	case *refreshToken:
		return r.clientID
	}
	return ""
}

// newAccessTokenLocked records an access token; s.mu is held.
func (s *storage) newAccessTokenLocked(req op.TokenRequest, refresh string) *accessToken {
	t := &accessToken{
		id:           randomID(),
		clientID:     clientOf(req),
		sub:          req.GetSubject(),
		scopes:       slices.Clone(req.GetScopes()),
		audience:     slices.Clone(req.GetAudience()),
		expires:      s.now().Add(s.cfg.AccessTokenTTL),
		refreshToken: refresh,
	}
	s.accessTokens[t.id] = t
	return t
}

func (s *storage) CreateAccessToken(ctx context.Context, req op.TokenRequest) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := req.(*authRequest); ok {
		s.stats.CodeGrants++
	}
	t := s.newAccessTokenLocked(req, "")
	return t.id, t.expires, nil
}

// CreateAccessAndRefreshTokens issues an access token and a refresh token.
// A refresh grant rotates the refresh token: the presented one is spent.
func (s *storage) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := &refreshToken{
		token:    randomID(),
		clientID: clientOf(req),
		sub:      req.GetSubject(),
		scopes:   slices.Clone(req.GetScopes()),
		audience: slices.Clone(req.GetAudience()),
		expires:  s.now().Add(s.cfg.RefreshTokenTTL),
	}
	switch r := req.(type) {
	case *authRequest:
		s.stats.CodeGrants++
		rt.authTime = r.authTime
	case *refreshToken:
		old, ok := s.refreshTokens[current]
		if !ok || old.token != r.token {
			return "", "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("refresh token already used")
		}
		s.stats.RefreshGrants++
		delete(s.refreshTokens, current)
		delete(s.accessTokens, old.accessToken)
		rt.authTime = old.authTime
	default:
		return "", "", time.Time{}, fmt.Errorf("testop: unsupported token request %T", req)
	}
	at := s.newAccessTokenLocked(req, rt.token)
	rt.accessToken = at.id
	s.refreshTokens[rt.token] = rt
	return at.id, rt.token, at.expires, nil
}

// TokenRequestByRefreshToken looks up a live refresh token. With the
// fail-refresh knob on, every refresh token is refused (invalid_grant), as
// when a provider has revoked the user's grant.
func (s *storage) TokenRequestByRefreshToken(ctx context.Context, token string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failRefresh {
		return nil, errors.New("refresh refused by the fail-refresh test knob")
	}
	rt, ok := s.refreshTokens[token]
	if !ok || s.now().After(rt.expires) {
		return nil, fmt.Errorf("refresh token: %w", errNotFound)
	}
	c := *rt
	c.scopes = slices.Clone(rt.scopes)
	return &c, nil
}

// TerminateSession is not used: TerminateSessionFromRequest replaces it.
func (s *storage) TerminateSession(ctx context.Context, sub, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.terminateLocked(ctx, sub, clientID)
	return nil
}

// TerminateSessionFromRequest ends the browser's sign-in session at the
// provider (RP-initiated logout) and, when the user is known from the
// id_token_hint, revokes the tokens issued to that user and client.
func (s *storage) TerminateSessionFromRequest(ctx context.Context, req *op.EndSessionRequest) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.EndSessions++
	s.terminateLocked(ctx, req.UserID, req.ClientID)
	return req.RedirectURI, nil
}

func (s *storage) terminateLocked(ctx context.Context, sub, clientID string) {
	if sid := sessionFromContext(ctx); sid != "" {
		if sub == "" {
			sub = s.sessions[sid]
		}
		delete(s.sessions, sid)
	}
	if sub == "" {
		return
	}
	for id, t := range s.accessTokens {
		if t.sub == sub && (clientID == "" || t.clientID == clientID) {
			delete(s.accessTokens, id)
		}
	}
	for id, t := range s.refreshTokens {
		if t.sub == sub && (clientID == "" || t.clientID == clientID) {
			delete(s.refreshTokens, id)
		}
	}
}

func (s *storage) RevokeToken(ctx context.Context, token, sub, clientID string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.accessTokens[token]; ok {
		if t.clientID != clientID {
			return oidc.ErrInvalidClient().WithDescription("token was not issued to this client")
		}
		delete(s.accessTokens, token)
		return nil
	}
	if rt, ok := s.refreshTokens[token]; ok {
		if rt.clientID != clientID {
			return oidc.ErrInvalidClient().WithDescription("token was not issued to this client")
		}
		delete(s.refreshTokens, token)
		delete(s.accessTokens, rt.accessToken)
	}
	return nil
}

func (s *storage) GetRefreshTokenInfo(ctx context.Context, clientID, token string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt, ok := s.refreshTokens[token]
	if !ok || rt.clientID != clientID {
		return "", "", op.ErrInvalidRefreshToken
	}
	return rt.sub, rt.token, nil
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) { return s.key, nil }

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{s.key}}, nil
}

func (s *storage) GetClientByClientID(ctx context.Context, clientID string) (op.Client, error) {
	if clientID != s.client.id {
		return nil, fmt.Errorf("client %q: %w", clientID, errNotFound)
	}
	return s.client, nil
}

// AuthorizeClientIDSecret checks the client secret in constant time.
func (s *storage) AuthorizeClientIDSecret(ctx context.Context, clientID, secret string) error {
	if clientID != s.client.id || subtle.ConstantTimeCompare([]byte(secret), []byte(s.client.secret)) != 1 {
		return errors.New("unknown client or wrong secret")
	}
	return nil
}

// SetUserinfoFromScopes is deprecated by the library; SetUserinfoFromRequest
// does the work.
func (s *storage) SetUserinfoFromScopes(ctx context.Context, info *oidc.UserInfo, sub, clientID string, scopes []string) error {
	return nil
}

// SetUserinfoFromRequest fills the ID token's user claims.
func (s *storage) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	return setUserinfo(info, req.GetSubject(), scopes)
}

// SetUserinfoFromToken answers the userinfo endpoint for a live access token.
func (s *storage) SetUserinfoFromToken(ctx context.Context, info *oidc.UserInfo, tokenID, sub, origin string) error {
	s.mu.Lock()
	t, ok := s.accessTokens[tokenID]
	live := ok && s.now().Before(t.expires)
	s.mu.Unlock()
	if !live {
		return fmt.Errorf("access token: %w", errNotFound)
	}
	return setUserinfo(info, t.sub, t.scopes)
}

func (s *storage) SetIntrospectionFromToken(ctx context.Context, resp *oidc.IntrospectionResponse, tokenID, sub, clientID string) error {
	s.mu.Lock()
	t, ok := s.accessTokens[tokenID]
	live := ok && s.now().Before(t.expires) && t.clientID == clientID
	s.mu.Unlock()
	if !live {
		return fmt.Errorf("access token: %w", errNotFound)
	}
	info := new(oidc.UserInfo)
	if err := setUserinfo(info, t.sub, t.scopes); err != nil {
		return err
	}
	resp.SetUserInfo(info)
	resp.Scope = t.scopes
	resp.ClientID = t.clientID
	resp.Expiration = oidc.FromTime(t.expires)
	return nil
}

// setUserinfo sets the claims of user sub that scopes grant: sub always,
// email and email_verified with "email", name and preferred_username with
// "profile", and the groups array always.
func setUserinfo(info *oidc.UserInfo, sub string, scopes []string) error {
	u, ok := userBySub(sub)
	if !ok {
		return fmt.Errorf("user %q: %w", sub, errNotFound)
	}
	info.Subject = u.Sub
	if slices.Contains(scopes, oidc.ScopeEmail) {
		info.Email = u.Email
		info.EmailVerified = true
	}
	if slices.Contains(scopes, oidc.ScopeProfile) {
		info.Name = u.Name
		info.PreferredUsername = u.Username
	}
	info.AppendClaims("groups", slices.Clone(u.Groups))
	return nil
}

func (s *storage) GetPrivateClaimsFromScopes(ctx context.Context, sub, clientID string, scopes []string) (map[string]any, error) {
	return nil, nil
}

// GetKeyByIDAndClientID refuses: no client authenticates with private_key_jwt.
func (s *storage) GetKeyByIDAndClientID(ctx context.Context, keyID, clientID string) (*jose.JSONWebKey, error) {
	return nil, errors.New("testop: no client keys (private_key_jwt is not offered)")
}

// ValidateJWTProfileScopes refuses: the JWT profile grant is not offered.
func (s *storage) ValidateJWTProfileScopes(ctx context.Context, sub string, scopes []string) ([]string, error) {
	return nil, errors.New("testop: the JWT profile grant is not offered")
}

func (s *storage) Health(context.Context) error { return nil }

// newSession starts an SSO session for sub and returns its id.
func (s *storage) newSession(sub string) string {
	id := randomID()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[id] = sub
	return id
}

// sessionUser returns the user of SSO session id.
func (s *storage) sessionUser(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, ok := s.sessions[id]
	return sub, ok
}

func (s *storage) countLogin(ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok {
		s.stats.Logins++
	} else {
		s.stats.FailedLogins++
	}
}

func (s *storage) snapshot() counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.stats
	c.ActiveSessions = len(s.sessions)
	return c
}

func (s *storage) setFailRefresh(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failRefresh = on
}

type sessionKey struct{}

// withSession puts the browser's SSO session id into ctx.
func withSession(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, sessionKey{}, id)
}

func sessionFromContext(ctx context.Context) string {
	id, _ := ctx.Value(sessionKey{}).(string)
	return id
}
