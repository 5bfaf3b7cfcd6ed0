package gcpkms

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/iterator"

	"github.com/kmsgate/kmsgate/backends"
)

// listFilter leaves out destroyed versions, which Cloud KMS keeps listing
// forever and which can never sign or be published again.
const listFilter = "state != DESTROYED"

// listPageSize is the page size asked for; the service may return fewer.
const listPageSize = 100

// wantAlgorithm is the only algorithm kmsgate signs with (ES256).
const wantAlgorithm = kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the CRC32C of b as Cloud KMS's integrity fields carry it.
func crc32c(b []byte) int64 { return int64(crc32.Checksum(b, castagnoli)) }

// callOptions turn off the client library's own retries (up to 60 s for
// some methods) and its 60 s default timeout: the RPC gets the attempt's
// deadline, and the backend's Caller retries, a bounded number of times,
// within the call's deadline.
func callOptions(ctx context.Context) []gax.CallOption {
	timeout := DefaultAttemptTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return []gax.CallOption{gax.WithRetry(nil), gax.WithTimeout(max(timeout, time.Millisecond))}
}

// call runs one RPC through the backend's Caller (deadlines, rate limit,
// retries), with the call options of each attempt.
func (b *Backend) call(ctx context.Context, fn func(ctx context.Context, opts []gax.CallOption) error) error {
	return b.caller.Do(ctx, func(ctx context.Context) error { return fn(ctx, callOptions(ctx)) })
}

// Versions implements backends.Backend. For a CryptoKey it lists every
// version (all pages) except destroyed ones; for a pinned version it reads
// that version. ENABLED EC_SIGN_P256_SHA256 versions come with their public
// key; versions in other states are reported with their state and no key.
// A listed version with another algorithm is skipped with a warning; a
// pinned one is refused with backends.ErrKeyType. PENDING_GENERATION
// versions are polled in the background until they are generated.
func (b *Backend) Versions(ctx context.Context) ([]backends.Version, error) {
	ctx, cancel := b.caller.WithTimeout(ctx)
	defer cancel()
	if b.pinned != "" {
		var p *kmspb.CryptoKeyVersion
		err := b.call(ctx, func(ctx context.Context, opts []gax.CallOption) error {
			var err error
			p, err = b.getVersion(ctx, b.pinned, opts)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("gcpkms: get %s: %w", b.pinned, err)
		}
		v, ok, err := b.version(ctx, p, true)
		if err != nil || !ok {
			return nil, err
		}
		return []backends.Version{v}, nil
	}

	if err := b.checkKey(ctx); err != nil {
		return nil, err
	}
	var list []*kmspb.CryptoKeyVersion
	err := b.call(ctx, func(ctx context.Context, opts []gax.CallOption) error {
		list = list[:0]
		it := b.client.ListCryptoKeyVersions(ctx, &kmspb.ListCryptoKeyVersionsRequest{
			Parent: b.key, PageSize: listPageSize, Filter: listFilter,
		}, opts...)
		for {
			p, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return nil
			}
			if err != nil {
				return classify(err)
			}
			if len(list) == maxVersions {
				return fmt.Errorf("more than %d versions listed; refusing to read further", maxVersions)
			}
			list = append(list, p)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("gcpkms: list versions of %s: %w", b.key, err)
	}
	b.forgetOthers(list)
	out := make([]backends.Version, 0, len(list))
	for _, p := range list {
		if !strings.HasPrefix(p.GetName(), b.key+"/cryptoKeyVersions/") {
			b.stats.count("list_name")
			return nil, fmt.Errorf("gcpkms: list versions of %s: %w", b.key, integrityError("the listing holds %q, which is not a version of this key", p.GetName()))
		}
		v, ok, err := b.version(ctx, p, false)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, v)
		}
	}
	return out, nil
}

// forgetOthers drops cached public keys of versions no longer listed
// (destroyed ones), so the cache holds only what the key still has.
func (b *Backend) forgetOthers(list []*kmspb.CryptoKeyVersion) {
	listed := make(map[string]bool, len(list))
	for _, p := range list {
		listed[p.GetName()] = true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for name := range b.pubs {
		if !listed[name] {
			delete(b.pubs, name)
		}
	}
}

// getVersion reads one CryptoKeyVersion and checks that the answer is about
// it.
func (b *Backend) getVersion(ctx context.Context, name string, opts []gax.CallOption) (*kmspb.CryptoKeyVersion, error) {
	p, err := b.client.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: name}, opts...)
	if err != nil {
		return nil, classify(err)
	}
	if p.GetName() != name {
		b.stats.count("version_name")
		return nil, integrityError("asked for %s, the service answered for %q", name, p.GetName())
	}
	return p, nil
}

// checkKey confirms once that the CryptoKey exists and is an
// ASYMMETRIC_SIGN key, and warns when new versions will not be P-256.
func (b *Backend) checkKey(ctx context.Context) error {
	if b.keyChecked.Load() {
		return nil
	}
	var k *kmspb.CryptoKey
	err := b.call(ctx, func(ctx context.Context, opts []gax.CallOption) error {
		var err error
		k, err = b.client.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: b.key}, opts...)
		return classify(err)
	})
	if err != nil {
		return fmt.Errorf("gcpkms: get %s: %w", b.key, err)
	}
	if k.GetPurpose() != kmspb.CryptoKey_ASYMMETRIC_SIGN {
		return fmt.Errorf("gcpkms: %s: %w: purpose %s, want ASYMMETRIC_SIGN with %s", b.key, backends.ErrKeyType, k.GetPurpose(), wantAlgorithm)
	}
	if alg := k.GetVersionTemplate().GetAlgorithm(); alg != wantAlgorithm {
		b.log.Warn("CryptoKey's version template is not EC_SIGN_P256_SHA256: new versions will be skipped", "key", b.key, "algorithm", alg.String())
	}
	b.keyChecked.Store(true)
	return nil
}

// state maps a Cloud KMS version state to the backends state.
func state(s kmspb.CryptoKeyVersion_CryptoKeyVersionState) backends.State {
	switch s {
	case kmspb.CryptoKeyVersion_ENABLED:
		return backends.StateEnabled
	case kmspb.CryptoKeyVersion_DISABLED:
		return backends.StateDisabled
	case kmspb.CryptoKeyVersion_DESTROYED:
		return backends.StateDestroyed
	case kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, kmspb.CryptoKeyVersion_PENDING_EXTERNAL_DESTRUCTION:
		return backends.StatePendingDeletion
	case kmspb.CryptoKeyVersion_PENDING_GENERATION:
		return backends.StatePendingGeneration
	case kmspb.CryptoKeyVersion_PENDING_IMPORT:
		return backends.StatePendingImport
	}
	return backends.StateUnavailable
}

// version converts one CryptoKeyVersion. ok is false for a version that is
// skipped (another algorithm, when listed).
func (b *Backend) version(ctx context.Context, p *kmspb.CryptoKeyVersion, pinned bool) (v backends.Version, ok bool, err error) {
	name := p.GetName()
	if alg := p.GetAlgorithm(); alg != wantAlgorithm {
		err := fmt.Errorf("gcpkms: %s: %w: algorithm %s, want %s", name, backends.ErrKeyType, alg, wantAlgorithm)
		if pinned {
			return v, false, err
		}
		b.warnOnce(name, "skipping a version that is not EC_SIGN_P256_SHA256", "version", name, "algorithm", alg.String())
		return v, false, nil
	}
	if p.GetCreateTime() == nil {
		b.warnOnce(name, "skipping a version without create_time", "version", name)
		return v, false, nil
	}
	v = backends.Version{ID: name, Created: p.GetCreateTime().AsTime(), State: state(p.GetState())}
	switch p.GetState() {
	case kmspb.CryptoKeyVersion_ENABLED:
		pub, err := b.publicKey(ctx, name)
		switch {
		case err == nil:
			v.PublicKey = pub
		case errors.Is(err, backends.ErrDisabled) || errors.Is(err, backends.ErrNotFound):
			// Changed state between the listing and GetPublicKey: leave it
			// out until the next refresh says what it is now.
			b.log.Warn("version left out: its public key is not available", "version", name, "err", err.Error())
			v.State = backends.StateUnavailable
		case errors.Is(err, backends.ErrKeyType) && !pinned:
			b.warnOnce(name, "skipping a version whose public key is not P-256", "version", name, "err", err.Error())
			return v, false, nil
		default:
			return v, false, err
		}
	case kmspb.CryptoKeyVersion_PENDING_GENERATION:
		b.startPoll(name)
	}
	return v, true, nil
}

func (b *Backend) warnOnce(name, msg string, args ...any) {
	b.mu.Lock()
	seen := b.warned[name]
	b.warned[name] = true
	b.mu.Unlock()
	if !seen {
		b.log.Warn(msg, args...)
	}
}

// publicKey returns a version's public key, from the cache or from
// GetPublicKey with its integrity checks: the answer must name the version,
// carry a pem_crc32c that matches the PEM, and hold a P-256 key.
func (b *Backend) publicKey(ctx context.Context, name string) (*ecdsa.PublicKey, error) {
	b.mu.Lock()
	pub := b.pubs[name]
	b.mu.Unlock()
	if pub != nil {
		return pub, nil
	}
	err := b.call(ctx, func(ctx context.Context, opts []gax.CallOption) error {
		resp, err := b.client.GetPublicKey(ctx, &kmspb.GetPublicKeyRequest{Name: name}, opts...)
		if err != nil {
			return classify(err)
		}
		pub, err = b.checkPublicKey(name, resp)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("gcpkms: public key of %s: %w", name, err)
	}
	b.mu.Lock()
	b.pubs[name] = pub
	b.mu.Unlock()
	return pub, nil
}

func (b *Backend) checkPublicKey(name string, resp *kmspb.PublicKey) (*ecdsa.PublicKey, error) {
	if resp.GetName() != name {
		b.stats.count("public_key_name")
		return nil, integrityError("asked for the public key of %s, the service answered for %q", name, resp.GetName())
	}
	if resp.GetPemCrc32C() == nil {
		b.stats.count("pem_crc32c")
		return nil, integrityError("the answer has no pem_crc32c")
	}
	if got, want := resp.GetPemCrc32C().GetValue(), crc32c([]byte(resp.GetPem())); got != want {
		b.stats.count("pem_crc32c")
		return nil, integrityError("pem_crc32c is %d, the PEM's CRC32C is %d", got, want)
	}
	if alg := resp.GetAlgorithm(); alg != wantAlgorithm {
		return nil, fmt.Errorf("%w: algorithm %s, want %s", backends.ErrKeyType, alg, wantAlgorithm)
	}
	block, rest := pem.Decode([]byte(resp.GetPem()))
	if block == nil || block.Type != "PUBLIC KEY" || len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("%w: the public key is not one PEM PUBLIC KEY block", backends.ErrKeyType)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: parse public key: %v", backends.ErrKeyType, err)
	}
	return backends.CheckP256("public key", key)
}

// startPoll polls a PENDING_GENERATION version in the background, once per
// version at a time.
func (b *Backend) startPoll(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.polling[name] {
		return
	}
	b.polling[name] = true
	b.pollWG.Add(1)
	go b.poll(name)
}

// poll reads a pending version every pollInterval until it leaves
// PENDING_GENERATION, the backend is closed, or pollFor has passed. When it
// is ENABLED its public key is fetched and cached, so that the next refresh
// publishes it without another call. It never runs on the signing path.
func (b *Backend) poll(name string) {
	defer b.pollWG.Done()
	defer func() {
		b.mu.Lock()
		delete(b.polling, name)
		b.mu.Unlock()
	}()
	t := time.NewTicker(b.pollInterval)
	defer t.Stop()
	for end := time.Now().Add(b.pollFor); time.Now().Before(end); {
		select {
		case <-b.bg.Done():
			return
		case <-t.C:
		}
		if done := b.pollOnce(name); done {
			return
		}
	}
	b.log.Warn("version still PENDING_GENERATION; stopped polling until the next refresh", "version", name, "polled_for", b.pollFor.String())
}

func (b *Backend) pollOnce(name string) (done bool) {
	ctx, cancel := b.caller.WithTimeout(b.bg)
	defer cancel()
	var p *kmspb.CryptoKeyVersion
	err := b.call(ctx, func(ctx context.Context, opts []gax.CallOption) error {
		var err error
		p, err = b.getVersion(ctx, name, opts)
		return err
	})
	switch {
	case errors.Is(err, backends.ErrNotFound):
		return true
	case err != nil:
		if b.bg.Err() == nil {
			b.log.Warn("polling a pending version", "version", name, "err", err.Error())
		}
		return false
	case p.GetState() == kmspb.CryptoKeyVersion_PENDING_GENERATION:
		return false
	case p.GetState() == kmspb.CryptoKeyVersion_ENABLED && p.GetAlgorithm() == wantAlgorithm:
		if _, err := b.publicKey(ctx, name); err != nil {
			b.log.Warn("version generated, but its public key could not be read", "version", name, "err", err.Error())
			return false
		}
		b.log.Info("version generated; it is published from the next refresh", "version", name)
	default:
		b.log.Info("version left PENDING_GENERATION", "version", name, "state", p.GetState().String())
	}
	return true
}
