package fakekv_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"math/big"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/kmsgate/kmsgate/backends/azurekv/fakekv"
)

// token is a fixed credential for direct SDK clients.
type token string

func (t token) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(t), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// sdkClient is the real azkeys client, without retries, talking to the fake.
func sdkClient(t testing.TB, e *env, tok string) *azkeys.Client {
	t.Helper()
	tr := e.fake.HTTPClient().Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	c, err := azkeys.NewClient(e.fake.URL(), token(tok), &azkeys.ClientOptions{
		ClientOptions:                        azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}, Transport: &http.Client{Transport: tr}},
		DisableChallengeResourceVerification: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFakeSpeaksKeyVault drives the fake with the real SDK client: the
// bearer challenge comes first (without the request body), every page of a
// listing is read through nextLink, and an ES256 signature is R||S that
// verifies with the version's key.
func TestFakeSpeaksKeyVault(t *testing.T) {
	e := newEnv(t)
	e.fake.SetPageSize(2)
	var versions []string
	for range 5 {
		versions = append(versions, e.add("jwt", fakekv.Version{}))
	}
	c := sdkClient(t, e, e.token)
	ctx := ctxTimeout(t, 10*time.Second)

	digest := sha256.Sum256([]byte("hello"))
	alg := azkeys.SignatureAlgorithmES256
	// The first request is a sign: the SDK sends it without its body and
	// without a token, gets the challenge, and sends it again with both.
	res, err := c.Sign(ctx, "jwt", versions[0], azkeys.SignParameters{Algorithm: &alg, Value: digest[:]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, withBody := e.fake.Challenges(); n != 1 || withBody != 0 {
		t.Fatalf("challenges %d (with a body: %d), want 1 without", n, withBody)
	}
	if got := res.KID.Version(); got != versions[0] || len(res.Result) != 64 {
		t.Fatalf("kid version %q, %d-byte signature", got, len(res.Result))
	}
	pub := e.fake.PublicKey("jwt", versions[0])
	if !ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(res.Result[:32]), new(big.Int).SetBytes(res.Result[32:])) {
		t.Fatal("the fake's signature does not verify")
	}

	pager := c.NewListKeyPropertiesVersionsPager("jwt", nil)
	seen := map[string]bool{}
	pages := 0
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, p := range page.Value {
			seen[p.KID.Version()] = true
			if p.Attributes == nil || p.Attributes.Created == nil || p.Attributes.Enabled == nil || !*p.Attributes.Enabled {
				t.Fatalf("attributes %+v", p.Attributes)
			}
		}
	}
	if pages != 3 || len(seen) != 5 {
		t.Fatalf("%d pages, %d versions; want 3 pages of 5 versions", pages, len(seen))
	}

	// A token the vault does not accept: 401 after the challenge.
	_, err = sdkClient(t, e, "wrong").GetKey(ctx, "jwt", versions[0], nil)
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusUnauthorized || e.fake.RefusedTokens() == 0 {
		t.Fatalf("wrong token: %v", err)
	}
}
