package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kmsgate/kmsgate/backends"
)

// KeyType is the only Transit key type this backend accepts.
const KeyType = "ecdsa-p256"

// maxKeyInfo bounds the size of a key's description read from Vault.
const maxKeyInfo = 16 << 20

// keyInfo is the data of GET MOUNT/keys/NAME, with the fields this backend
// reads.
type keyInfo struct {
	Type                 string                     `json:"type"`
	SupportsSigning      *bool                      `json:"supports_signing"`
	LatestVersion        int                        `json:"latest_version"`
	MinAvailableVersion  int                        `json:"min_available_version"`
	MinDecryptionVersion int                        `json:"min_decryption_version"`
	MinEncryptionVersion int                        `json:"min_encryption_version"`
	Keys                 map[string]json.RawMessage `json:"keys"`
}

// versionInfo is one entry of keyInfo.Keys for an asymmetric key.
type versionInfo struct {
	CreationTime string `json:"creation_time"`
	PublicKey    string `json:"public_key"`
}

// Versions implements backends.Backend: it reads GET MOUNT/keys/NAME and
// returns every version the key holds, oldest first.
func (b *Backend) Versions(ctx context.Context) ([]backends.Version, error) {
	var info *keyInfo
	err := b.call(ctx, func(ctx context.Context) error {
		var err error
		info, err = b.readKey(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return b.versions(info)
}

// readKey makes one GET MOUNT/keys/NAME request.
func (b *Backend) readKey(ctx context.Context) (*keyInfo, error) {
	what := fmt.Sprintf("vault: read %s", b)
	resp, err := b.client.Logical().ReadRawWithContext(ctx, b.keysPath)
	if resp != nil {
		defer drainClose(resp.Body)
	}
	if err != nil {
		return nil, mapError(what, err)
	}
	var answer struct {
		Data *keyInfo `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxKeyInfo)).Decode(&answer); err != nil {
		return nil, fmt.Errorf("%s: %w: decode the answer: %v", what, backends.ErrUnavailable, err)
	}
	if answer.Data == nil {
		return nil, fmt.Errorf("%s: %w: the answer holds no key data", what, backends.ErrNotFound)
	}
	return answer.Data, nil
}

// versions turns the key description into versions. A key of another type
// than ecdsa-p256 is refused with ErrKeyType; a version whose public key or
// creation time cannot be read fails the whole listing with ErrIntegrity, so
// that the last good set keeps being served.
func (b *Backend) versions(info *keyInfo) ([]backends.Version, error) {
	if info.Type != KeyType {
		return nil, fmt.Errorf("vault: %s: %w: the Transit key type is %q, want %q", b, backends.ErrKeyType, info.Type, KeyType)
	}
	if info.SupportsSigning != nil && !*info.SupportsSigning {
		return nil, fmt.Errorf("vault: %s: %w: the Transit key does not support signing", b, backends.ErrKeyType)
	}
	out := make([]backends.Version, 0, len(info.Keys))
	for ver, raw := range info.Keys {
		n, err := strconv.Atoi(ver)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("vault: %s: %w: version %q is not a positive number", b, backends.ErrIntegrity, ver)
		}
		id := versionID(b.name, n)
		var vi versionInfo
		if err := json.Unmarshal(raw, &vi); err != nil {
			return nil, fmt.Errorf("vault: %s: %w: %s: %v", b, backends.ErrIntegrity, id, err)
		}
		v := backends.Version{ID: id, State: b.state(info, n)}
		if v.Created, err = time.Parse(time.RFC3339Nano, vi.CreationTime); err != nil {
			return nil, fmt.Errorf("vault: %s: %w: %s: creation_time %q: %v", b, backends.ErrIntegrity, id, vi.CreationTime, err)
		}
		if v.PublicKey, err = parsePublicKey(id, vi.PublicKey); err != nil {
			return nil, fmt.Errorf("vault: %s: %w", b, err)
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(x, y backends.Version) int { return versionNumber(x.ID) - versionNumber(y.ID) })
	return out, nil
}

// state returns the state of version n: disabled (not published) below
// min_decryption_version, verify-only below min_encryption_version or
// min_available_version, enabled otherwise.
func (b *Backend) state(info *keyInfo, n int) backends.State {
	switch {
	case n < info.MinDecryptionVersion:
		return backends.StateDisabled
	case n < info.MinEncryptionVersion, n < info.MinAvailableVersion:
		return backends.StateVerifyOnly
	case info.LatestVersion > 0 && n > info.LatestVersion:
		// Not a version Vault would sign with.
		return backends.StateUnavailable
	}
	return backends.StateEnabled
}

// parsePublicKey parses a version's PEM public key and checks it is P-256.
func parsePublicKey(id, s string) (*ecdsa.PublicKey, error) {
	block, rest := pem.Decode([]byte(s))
	if block == nil || block.Type != "PUBLIC KEY" || strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Errorf("%w: %s: public_key is not one PEM PUBLIC KEY block", backends.ErrIntegrity, id)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: public_key: %v", backends.ErrIntegrity, id, err)
	}
	return backends.CheckP256(id, k)
}

// versionID returns the Version.ID of version n of key name: "NAME/vN".
func versionID(name string, n int) string { return name + "/v" + strconv.Itoa(n) }

// parseVersionID returns the version number of id if id is a version of
// key name.
func parseVersionID(name, id string) (int, bool) {
	rest, ok := strings.CutPrefix(id, name+"/v")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 1 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}

// versionNumber returns N of an ID "NAME/vN" built by versionID.
func versionNumber(id string) int {
	i := strings.LastIndex(id, "/v")
	n, _ := strconv.Atoi(id[i+2:])
	return n
}
