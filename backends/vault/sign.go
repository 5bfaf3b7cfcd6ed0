package vault

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/kmsgate/kmsgate/backends"
)

// maxSignAnswer bounds the size of a sign answer read from Vault.
const maxSignAnswer = 64 << 10

// Sign implements backends.Backend: it signs the SHA-256 digest with exactly
// the version id ("NAME/vN") through MOUNT/sign/NAME and returns the
// 64-byte JOSE signature. It fails with ErrIntegrity when Vault says that
// another version signed or answers with a malformed signature.
func (b *Backend) Sign(ctx context.Context, id string, digest []byte) ([]byte, error) {
	n, ok := parseVersionID(b.name, id)
	if !ok {
		return nil, fmt.Errorf("vault: sign with %q: %w: not a version of %s (want %s/vN)", id, backends.ErrNotFound, b, b.name)
	}
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("vault: sign with %s: digest is %d bytes, want a %d-byte SHA-256 digest", id, len(digest), sha256.Size)
	}
	body := signRequest(digest, n)
	var sig []byte
	err := b.call(ctx, func(ctx context.Context) error {
		var err error
		sig, err = b.signOnce(ctx, id, n, body)
		return err
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// signRequest returns the JSON body of a sign request for digest with
// version n.
func signRequest(digest []byte, n int) []byte {
	enc := base64.StdEncoding
	buf := make([]byte, 0, 160)
	buf = append(buf, `{"input":"`...)
	buf = enc.AppendEncode(buf, digest)
	buf = append(buf, `","prehashed":true,"hash_algorithm":"sha2-256","marshaling_algorithm":"jws","key_version":`...)
	buf = strconv.AppendInt(buf, int64(n), 10)
	return append(buf, '}')
}

// signAnswer is the part of a sign answer this backend reads.
type signAnswer struct {
	Data struct {
		Signature string `json:"signature"`
		// KeyVersion is returned by Vault 1.9 and later.
		KeyVersion *json.Number `json:"key_version"`
	} `json:"data"`
}

// signOnce makes one sign request and checks the answer.
func (b *Backend) signOnce(ctx context.Context, id string, n int, body []byte) ([]byte, error) {
	what := "vault: sign with " + id
	resp, err := b.client.Logical().WriteRawWithContext(ctx, b.signPath, body)
	if resp != nil {
		defer drainClose(resp.Body)
	}
	if err != nil {
		return nil, mapError(what, err)
	}
	var answer signAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxSignAnswer)).Decode(&answer); err != nil {
		return nil, fmt.Errorf("%s: %w: decode the answer: %v", what, backends.ErrUnavailable, err)
	}
	return parseSignature(id, n, answer)
}

// parseSignature checks that a sign answer was made by version n and returns
// its 64-byte R||S signature.
func parseSignature(id string, n int, answer signAnswer) ([]byte, error) {
	what := "vault: sign with " + id
	used, sig, err := splitSignature(answer.Data.Signature)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", what, backends.ErrIntegrity, err)
	}
	if used != n {
		return nil, fmt.Errorf("%s: %w: Vault signed with version %d", what, backends.ErrIntegrity, used)
	}
	if kv := answer.Data.KeyVersion; kv != nil {
		if k, err := kv.Int64(); err != nil || k != int64(n) {
			return nil, fmt.Errorf("%s: %w: Vault reports key_version %s", what, backends.ErrIntegrity, kv.String())
		}
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: the signature is not base64url: %v", what, backends.ErrIntegrity, err)
	}
	if len(raw) != backends.SignatureSize {
		return nil, fmt.Errorf("%s: %w: the JWS signature is %d bytes, want %d", what, backends.ErrIntegrity, len(raw), backends.SignatureSize)
	}
	return raw, nil
}

// splitSignature splits a Transit signature "vault:vN:SIG" into N and SIG.
func splitSignature(s string) (int, string, error) {
	rest, ok := strings.CutPrefix(s, "vault:v")
	if !ok {
		return 0, "", fmt.Errorf("the signature %q does not start with vault:v", truncate(s))
	}
	num, sig, ok := strings.Cut(rest, ":")
	if !ok {
		return 0, "", fmt.Errorf("the signature %q has no version prefix vault:vN:", truncate(s))
	}
	v, err := strconv.Atoi(num)
	if err != nil || v < 1 || strconv.Itoa(v) != num {
		return 0, "", fmt.Errorf("the signature's version %q is not a positive number", num)
	}
	return v, sig, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// drainClose reads what is left of a response body (bounded) before closing
// it, so that the connection goes back to the pool instead of being closed.
func drainClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, maxSignAnswer)
	_ = body.Close()
}
