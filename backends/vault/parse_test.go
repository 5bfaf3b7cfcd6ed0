package vault

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/kmsgate/kmsgate/backends"
)

func TestParseURI(t *testing.T) {
	good := []struct{ uri, name, mount string }{
		{"hashivault://jwt", "jwt", "transit"},
		{"hashivault://jwt-signing.v2", "jwt-signing.v2", "transit"},
		{"hashivault://My_Key", "My_Key", "transit"},
		{"hashivault://jwt/", "jwt", "transit"},
		{"hashivault://jwt?mount=transit-prod", "jwt", "transit-prod"},
		{"hashivault://jwt?mount=/team/a/transit/", "jwt", "team/a/transit"},
	}
	for _, c := range good {
		u, err := url.Parse(c.uri)
		if err != nil {
			t.Fatal(err)
		}
		name, mount, err := parseURI(u)
		if err != nil || name != c.name || mount != c.mount {
			t.Errorf("%s: %q %q %v, want %q %q", c.uri, name, mount, err, c.name, c.mount)
		}
	}
	bad := []struct{ uri, why string }{
		{"hashivault:jwt", "no //"},
		{"hashivault://", "no key name"},
		{"hashivault:///jwt", "hashivault://jwt"},
		{"hashivault://jwt/extra", "path"},
		{"hashivault://user:pw@jwt", "user info"},
		{"hashivault://jwt:8200", "port"},
		{"hashivault://jwt#frag", "fragment"},
		{"hashivault://jwt?mount=", "mount is empty"},
		{"hashivault://jwt?mount=a&mount=b", "2 times"},
		{"hashivault://jwt?mount=a/../b", "not a valid mount"},
		{"hashivault://jwt?mount=a//b", "not a valid mount"},
		{"hashivault://jwt?namespace=x", "unknown parameter"},
		{"hashivault://-jwt", "not a valid Transit key name"},
		{"hashivault://jwt.", "not a valid Transit key name"},
		{"hashivault://j%20wt", "not a valid Transit key name"},
		{"gcpkms://jwt", "scheme"},
	}
	for _, c := range bad {
		u, err := url.Parse(c.uri)
		if err != nil {
			continue // refused by net/url already
		}
		_, _, err = parseURI(u)
		if !errors.Is(err, backends.ErrInvalidURI) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v, want ErrInvalidURI mentioning %q", c.uri, err, c.why)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("%s: the error shows the password: %v", c.uri, err)
		}
	}
}

func TestVersionID(t *testing.T) {
	if id := versionID("jwt", 12); id != "jwt/v12" {
		t.Fatalf("versionID: %q", id)
	}
	for id, want := range map[string]int{"jwt/v1": 1, "jwt/v12": 12, "jwt/v0": 0, "jwt/v01": 0, "jwt/v-1": 0, "jwt/vx": 0, "jwt/v": 0, "other/v1": 0, "jwt/v1/v2": 0, "jwt2/v1": 0} {
		n, ok := parseVersionID("jwt", id)
		if (want > 0) != ok || n != want {
			t.Errorf("parseVersionID(%q) = %d %v, want %d", id, n, ok, want)
		}
	}
}

func answer(sig string, keyVersion string) signAnswer {
	var a signAnswer
	a.Data.Signature = sig
	if keyVersion != "" {
		n := json.Number(keyVersion)
		a.Data.KeyVersion = &n
	}
	return a
}

func TestParseSignature(t *testing.T) {
	raw := make([]byte, 64)
	for i := range raw {
		raw[i] = byte(i + 1)
	}
	b64 := base64.RawURLEncoding.EncodeToString(raw)
	sig, err := parseSignature("k/v3", 3, answer("vault:v3:"+b64, ""))
	if err != nil || string(sig) != string(raw) {
		t.Fatalf("old server answer: %x %v", sig, err)
	}
	if _, err := parseSignature("k/v3", 3, answer("vault:v3:"+b64, "3")); err != nil {
		t.Fatalf("answer with key_version: %v", err)
	}
	bad := []struct {
		a   signAnswer
		why string
	}{
		{answer("vault:v2:"+b64, ""), "signed with version 2"},
		{answer("vault:v3:"+b64, "2"), "key_version 2"},
		{answer("vault:v3:"+b64, "x"), "key_version x"},
		{answer("v3:"+b64, ""), "does not start with vault:v"},
		{answer("vault:v3"+b64, ""), "has no version prefix"},
		{answer("vault:v:"+b64, ""), "not a positive number"},
		{answer("vault:v03:"+b64, ""), "not a positive number"},
		{answer("vault:v3:"+base64.StdEncoding.EncodeToString(raw), ""), "not base64url"},
		{answer("vault:v3:"+base64.RawURLEncoding.EncodeToString(raw[:63]), ""), "63 bytes"},
		{answer("vault:v3:MEUCIQ", ""), "bytes, want 64"},
		{answer("", ""), "does not start with vault:v"},
	}
	for _, c := range bad {
		_, err := parseSignature("k/v3", 3, c.a)
		if !errors.Is(err, backends.ErrIntegrity) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%+v: %v, want ErrIntegrity mentioning %q", c.a, err, c.why)
		}
	}
}

func TestSignRequest(t *testing.T) {
	digest := make([]byte, 32)
	digest[0] = 0xff
	var got map[string]any
	if err := json.Unmarshal(signRequest(digest, 7), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"input": base64.StdEncoding.EncodeToString(digest), "prehashed": true, "hash_algorithm": "sha2-256", "marshaling_algorithm": "jws", "key_version": float64(7)}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("sign request %v, want %v", got, want)
	}
}

func TestStatusError(t *testing.T) {
	cases := []struct {
		status int
		msg    string
		want   error
	}{
		{403, "permission denied", backends.ErrPermission},
		{429, "rate limit quota exceeded", backends.ErrThrottled},
		{404, "", backends.ErrNotFound},
		{400, "encryption key not found", backends.ErrNotFound},
		{500, "1 error occurred: requested version for signing is higher than the latest key version", backends.ErrNotFound},
		{500, "1 error occurred: requested version for signing is less than the minimum encryption key version", backends.ErrDisabled},
		{400, "key type aes256-gcm96 does not support signing", backends.ErrKeyType},
		{500, "internal error", backends.ErrUnavailable},
		{502, "", backends.ErrUnavailable},
		{503, "Vault is sealed", backends.ErrUnavailable},
		{412, "", backends.ErrUnavailable},
		{400, "something else", errUnexpected},
	}
	for _, c := range cases {
		err := mapError("op", &api.ResponseError{StatusCode: c.status, Errors: []string{c.msg}})
		if !errors.Is(err, c.want) {
			t.Errorf("%d %q: %v, want %v", c.status, c.msg, err, c.want)
		}
		if retryable(err) != (c.want == backends.ErrUnavailable || c.want == backends.ErrThrottled) {
			t.Errorf("%d %q: retryable %v", c.status, c.msg, retryable(err))
		}
	}
	if err := mapError("op", context.DeadlineExceeded); !errors.Is(err, backends.ErrUnavailable) {
		t.Errorf("deadline: %v", err)
	}
	if err := mapError("op", context.Canceled); errors.Is(err, backends.ErrUnavailable) || retryable(err) {
		t.Errorf("canceled: %v", err)
	}
	if err := mapError("op", errors.New("dial tcp 127.0.0.1:1: connect: connection refused")); !errors.Is(err, backends.ErrUnavailable) {
		t.Errorf("connection refused: %v", err)
	}
}

func TestAuthConfig(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	client.ClearToken()
	cases := []struct {
		cfg  authConfig
		want error
		why  string
	}{
		{authConfig{}, backends.ErrPermission, "VAULT_TOKEN is unset"},
		{authConfig{Method: "ldap"}, backends.ErrConfig, EnvAuth},
		{authConfig{Method: "kubernetes"}, backends.ErrConfig, EnvRole},
		{authConfig{Method: "approle", RoleID: "r"}, backends.ErrConfig, EnvSecretIDFile},
		{authConfig{Method: "approle", SecretIDFile: "/x"}, backends.ErrConfig, EnvRoleID},
	}
	for _, c := range cases {
		_, err := newAuthenticator(client, nil, c.cfg)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%+v: %v, want %v mentioning %s", c.cfg, err, c.want, c.why)
		}
	}
	client.SetToken("s.from-env")
	a, err := newAuthenticator(client, nil, authConfig{Method: "approle", RoleID: "r", SecretIDFile: "/x"})
	if err != nil {
		t.Fatal(err)
	}
	if client.Token() != "" {
		t.Error("with approle the VAULT_TOKEN token is still sent")
	}
	a.stop()
}
