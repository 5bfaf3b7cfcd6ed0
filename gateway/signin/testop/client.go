package main

import (
	"net/url"
	"strings"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// Client registration of the gateway.
const (
	clientID     = "kmsgate"
	clientSecret = "kmsgate-test-secret"
	callbackPath = "/v1/oidc/callback"
)

// client is the one registered client: kmsgate, a confidential web client
// whose redirect URIs are its callback on any loopback port.
type client struct {
	id, secret string
	idTokenTTL time.Duration
}

var _ op.HasRedirectGlobs = (*client)(nil)

func newKmsgateClient(idTokenTTL time.Duration) *client {
	return &client{id: clientID, secret: clientSecret, idTokenTTL: idTokenTTL}
}

// loopbackHosts are the host names a test gateway is reached by.
var loopbackHosts = []string{"127.0.0.1", "localhost"}

// portGlobs returns one glob per port length (1 to 5 digits), so that a glob
// matches a decimal port and nothing else: a plain "*" would also match
// "1@evil.example", turning the host into user information.
func portGlobs(prefix, suffix string) []string {
	var out []string
	for n := 1; n <= 5; n++ {
		out = append(out, prefix+strings.Repeat("[0-9]", n)+suffix)
	}
	return out
}

func (c *client) GetID() string { return c.id }

// RedirectURIs lists no fixed URI: RedirectURIGlobs admits the callback on
// every port.
func (c *client) RedirectURIs() []string { return nil }

// RedirectURIGlobs admits http(s)://127.0.0.1:PORT/v1/oidc/callback and
// http(s)://localhost:PORT/v1/oidc/callback for any port.
func (c *client) RedirectURIGlobs() []string {
	var out []string
	for _, scheme := range []string{"http", "https"} {
		for _, h := range loopbackHosts {
			out = append(out, portGlobs(scheme+"://"+h+":", callbackPath)...)
		}
	}
	return out
}

func (c *client) PostLogoutRedirectURIs() []string { return nil }

// PostLogoutRedirectURIGlobs admits the root and any one-segment path on
// the same hosts and ports as the callback.
func (c *client) PostLogoutRedirectURIGlobs() []string {
	var out []string
	for _, scheme := range []string{"http", "https"} {
		for _, h := range loopbackHosts {
			out = append(out, portGlobs(scheme+"://"+h+":", "/")...)
			out = append(out, portGlobs(scheme+"://"+h+":", "/*")...)
		}
	}
	return out
}

func (c *client) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c *client) AuthMethod() oidc.AuthMethod         { return oidc.AuthMethodBasic }
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *client) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken}
}

// LoginURL is the provider's login page for auth request id.
func (c *client) LoginURL(id string) string {
	return loginPath + "?authRequestID=" + url.QueryEscape(id)
}

func (c *client) AccessTokenType() op.AccessTokenType { return op.AccessTokenTypeBearer }
func (c *client) IDTokenLifetime() time.Duration      { return c.idTokenTTL }
func (c *client) DevMode() bool                       { return false }
func (c *client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *client) IsScopeAllowed(string) bool { return false }

// IDTokenUserinfoClaimsAssertion puts the user's claims (email, name,
// groups) into the ID token itself, not only behind the userinfo endpoint.
func (c *client) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c *client) ClockSkew() time.Duration             { return 0 }
