package azurekv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/kmsgate/kmsgate/backends"
)

// Versions implements backends.Backend. For a key it lists every version
// (all pages); for a pinned version it reads that version. Enabled versions
// within their nbf/exp window, and enabled versions whose nbf is still
// ahead, are read with GetKey for their public key, key type and key_ops
// (cached until the version's attributes.updated changes); disabled and
// expired versions are reported with their state and no key. A listed
// version of another key type is skipped with a warning; when no version is
// usable and some were of another type, or a pinned version is, the key is
// refused with backends.ErrKeyType.
func (b *Backend) Versions(ctx context.Context) ([]backends.Version, error) {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	now := time.Now()
	if b.pinned != "" {
		return b.pinnedVersion(ctx, now)
	}
	var props []*azkeys.KeyProperties
	err := b.call(ctx, func(ctx context.Context) error {
		props = props[:0]
		pager := b.client.NewListKeyPropertiesVersionsPager(b.name, nil)
		for pager.More() {
			page, err := pager.NextPage(ctx)
			if err != nil {
				return err
			}
			if len(props)+len(page.Value) > maxVersions {
				return fmt.Errorf("%w: more than %d versions listed; refusing to read further", backends.ErrUnavailable, maxVersions)
			}
			props = append(props, page.Value...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("azurekv: list versions of %s: %w", b.display, err)
	}
	b.forgetOthers(props)
	out := make([]backends.Version, 0, len(props))
	var wrongType error
	for _, p := range props {
		if p == nil || p.KID == nil {
			continue
		}
		version, err := b.kidVersion(string(*p.KID))
		if err != nil {
			return nil, fmt.Errorf("azurekv: list versions of %s: %w: a listed version %v", b.display, backends.ErrIntegrity, err)
		}
		v, ok, err := b.version(ctx, version, p.Attributes, now)
		switch {
		case errors.Is(err, backends.ErrKeyType):
			wrongType = err
			b.warnOnce(version, "skipping a version that cannot sign ES256", "version", v.ID, "err", err.Error())
			continue
		case err != nil:
			return nil, err
		case ok:
			out = append(out, v)
		}
	}
	if wrongType != nil && !slices.ContainsFunc(out, func(v backends.Version) bool { return v.State.Published() }) {
		return nil, fmt.Errorf("azurekv: %s: no usable version: %w", b.display, wrongType)
	}
	return out, nil
}

// pinnedVersion reads the one version a pinned URI names.
func (b *Backend) pinnedVersion(ctx context.Context, now time.Time) ([]backends.Version, error) {
	var kb azkeys.KeyBundle
	err := b.call(ctx, func(ctx context.Context) error {
		r, err := b.client.GetKey(ctx, b.name, b.pinned, nil)
		kb = r.KeyBundle
		return err
	})
	if errors.Is(err, backends.ErrDisabled) {
		// Key Vault refuses to read a disabled version.
		return []backends.Version{{ID: b.versionID(b.pinned), State: backends.StateDisabled}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("azurekv: get %s: %w", b.display, err)
	}
	info := b.checkBundle(b.pinned, kb)
	if info.err != nil && !errors.Is(info.err, backends.ErrKeyType) {
		return nil, fmt.Errorf("azurekv: get %s: %w", b.display, info.err)
	}
	if info.err != nil {
		return nil, fmt.Errorf("azurekv: %s: %w", b.display, info.err)
	}
	v, ok := versionFrom(b.versionID(b.pinned), kb.Attributes, now)
	if !ok {
		return nil, fmt.Errorf("azurekv: get %s: %w: the version has no attributes.created", b.display, backends.ErrIntegrity)
	}
	if v.State.Published() {
		v.PublicKey = info.pub
	}
	return []backends.Version{v}, nil
}

// version converts one listed version, reading its key when it is
// published. ok is false for a version left out (no creation time).
func (b *Backend) version(ctx context.Context, version string, attrs *azkeys.KeyAttributes, now time.Time) (backends.Version, bool, error) {
	v, ok := versionFrom(b.versionID(version), attrs, now)
	if !ok {
		b.warnOnce(version, "skipping a version without attributes.created", "version", v.ID)
		return v, false, nil
	}
	if !v.State.Published() {
		return v, true, nil
	}
	var updated time.Time
	if attrs.Updated != nil {
		updated = *attrs.Updated
	}
	info, err := b.keyInfo(ctx, version, updated)
	switch {
	case err == nil && info.err != nil:
		return v, false, info.err
	case err == nil:
		v.PublicKey = info.pub
	case errors.Is(err, backends.ErrDisabled) || errors.Is(err, backends.ErrNotFound):
		// Changed between the listing and GetKey: leave it out until the
		// next refresh says what it is now.
		b.log.Warn("version left out: its key could not be read", "version", v.ID, "err", err.Error())
		v.State = backends.StateUnavailable
	default:
		return v, false, err
	}
	return v, true, nil
}

// versionFrom maps Key Vault attributes to a version's creation time and
// state: disabled, expired (exp passed), verify-only (nbf ahead) or enabled.
func versionFrom(id string, a *azkeys.KeyAttributes, now time.Time) (backends.Version, bool) {
	v := backends.Version{ID: id}
	if a == nil || a.Created == nil {
		return v, false
	}
	v.Created = a.Created.UTC()
	switch {
	case a.Enabled == nil || !*a.Enabled:
		v.State = backends.StateDisabled
	case a.Expires != nil && !now.Before(*a.Expires):
		v.State = backends.StateExpired
	case a.NotBefore != nil && now.Before(*a.NotBefore):
		v.State = backends.StateVerifyOnly
	default:
		v.State = backends.StateEnabled
	}
	return v, true
}

// keyInfo returns a version's key from the cache when its
// attributes.updated is unchanged, or from GetKey.
func (b *Backend) keyInfo(ctx context.Context, version string, updated time.Time) (keyInfo, error) {
	b.mu.Lock()
	info, ok := b.info[version]
	b.mu.Unlock()
	if ok && info.updated.Equal(updated) && !updated.IsZero() {
		return info, nil
	}
	var kb azkeys.KeyBundle
	err := b.call(ctx, func(ctx context.Context) error {
		r, err := b.client.GetKey(ctx, b.name, version, nil)
		kb = r.KeyBundle
		return err
	})
	if err != nil {
		return keyInfo{}, fmt.Errorf("azurekv: get %s: %w", b.versionID(version), err)
	}
	info = b.checkBundle(version, kb)
	if info.err != nil && !errors.Is(info.err, backends.ErrKeyType) {
		return keyInfo{}, fmt.Errorf("azurekv: get %s: %w", b.versionID(version), info.err)
	}
	info.updated = updated
	b.mu.Lock()
	b.info[version] = info
	b.mu.Unlock()
	return info, nil
}

// checkBundle checks one GetKey answer: it must name the version asked for
// and hold an EC or EC-HSM P-256 key that allows sign. A key of another
// kind gives info.err wrapping backends.ErrKeyType.
func (b *Backend) checkBundle(version string, kb azkeys.KeyBundle) keyInfo {
	id := b.versionID(version)
	k := kb.Key
	if k == nil || k.KID == nil {
		return keyInfo{err: fmt.Errorf("%w: the answer has no key", backends.ErrIntegrity)}
	}
	if got, err := b.kidVersion(string(*k.KID)); err != nil || got != version {
		return keyInfo{err: fmt.Errorf("%w: asked for %s, Key Vault answered with kid %q", backends.ErrIntegrity, id, string(*k.KID))}
	}
	kty := ""
	if k.Kty != nil {
		kty = string(*k.Kty)
	}
	crv := ""
	if k.Crv != nil {
		crv = string(*k.Crv)
	}
	if kty != string(azkeys.KeyTypeEC) && kty != string(azkeys.KeyTypeECHSM) {
		return keyInfo{err: fmt.Errorf("%s: %w: key type %q, want EC or EC-HSM with curve P-256", id, backends.ErrKeyType, kty)}
	}
	if crv != string(azkeys.CurveNameP256) {
		return keyInfo{err: fmt.Errorf("%s: %w: %s key on curve %q, want P-256", id, backends.ErrKeyType, kty, crv)}
	}
	ops := make([]string, 0, len(k.KeyOps))
	for _, op := range k.KeyOps {
		if op != nil {
			ops = append(ops, string(*op))
		}
	}
	if !slices.Contains(ops, string(azkeys.KeyOperationSign)) {
		return keyInfo{err: fmt.Errorf("%s: %w: key_ops [%s] do not include sign", id, backends.ErrKeyType, strings.Join(ops, " "))}
	}
	if len(k.X) == 0 || len(k.X) > 32 || len(k.Y) == 0 || len(k.Y) > 32 {
		return keyInfo{err: fmt.Errorf("%w: %s: x and y are %d and %d bytes, want 32", backends.ErrIntegrity, id, len(k.X), len(k.Y))}
	}
	point := make([]byte, 65)
	point[0] = 4
	copy(point[33-len(k.X):33], k.X)
	copy(point[65-len(k.Y):], k.Y)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return keyInfo{err: fmt.Errorf("%w: %s: public key: %v", backends.ErrIntegrity, id, err)}
	}
	return keyInfo{pub: pub}
}

// forgetOthers drops cached keys of versions no longer listed.
func (b *Backend) forgetOthers(props []*azkeys.KeyProperties) {
	listed := make(map[string]bool, len(props))
	for _, p := range props {
		if p != nil && p.KID != nil {
			listed[strings.ToLower(p.KID.Version())] = true
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for v := range b.info {
		if !listed[v] {
			delete(b.info, v)
		}
	}
}

func (b *Backend) warnOnce(key, msg string, args ...any) {
	b.mu.Lock()
	seen := b.warned[key]
	b.warned[key] = true
	b.mu.Unlock()
	if !seen {
		b.log.Warn(msg, args...)
	}
}

// versionID is the backend id of a version: its kid,
// https://VAULT/keys/NAME/VERSION (the endpoint's base URL with an
// override).
func (b *Backend) versionID(version string) string {
	return b.base + "/keys/" + b.name + "/" + version
}

// kidVersion returns the version a Key Vault kid names, after checking that
// it is https://HOST/keys/NAME/VERSION for this backend's host and key
// (host and name compared without letter case, as Key Vault does).
func (b *Backend) kidVersion(kid string) (string, error) {
	u, err := url.Parse(kid)
	if err != nil || u.Scheme != "https" {
		return "", fmt.Errorf("kid %q is not an https URL", kid)
	}
	if !strings.EqualFold(hostPort(u), b.baseHost) {
		return "", fmt.Errorf("kid %q is on host %q, not %q", kid, u.Host, b.baseHost)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 3 || parts[0] != "keys" || !strings.EqualFold(parts[1], b.name) || !versionRE.MatchString(parts[2]) {
		return "", fmt.Errorf("kid %q is not a version of key %s", kid, b.name)
	}
	return strings.ToLower(parts[2]), nil
}

// hostPort is a URL's host with the default https port removed.
func hostPort(u *url.URL) string {
	if u.Port() == "443" {
		return u.Hostname()
	}
	return u.Host
}
