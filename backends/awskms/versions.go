package awskms

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsgate/kmsgate/backends"
)

// Versions implements backends.Backend. For one key it describes that key;
// for an alias prefix it lists the aliases under the prefix and describes
// the key of each (two aliases of one key are one version). A key in the
// Enabled state must be an ECC_NIST_P256 SIGN_VERIFY key, or the whole call
// fails with backends.ErrKeyType naming the key, its spec and its usage;
// keys in other states are reported with their state and no public key, and
// the gateway drops them from the JWKS. Public keys are fetched once per key
// and kept: a KMS key's key pair never changes.
func (b *Backend) Versions(ctx context.Context) ([]backends.Version, error) {
	ctx, cancel := b.caller.WithTimeout(ctx)
	defer cancel()
	refs := []string{b.target.ref}
	if b.target.prefix != "" {
		var err error
		if refs, err = b.aliasTargets(ctx); err != nil {
			return nil, err
		}
	}
	var (
		out  []backends.Version
		seen = map[string]bool{}
		pubs = map[string]*ecdsa.PublicKey{}
	)
	for _, ref := range refs {
		v, err := b.describe(ctx, ref)
		if err != nil {
			return nil, err
		}
		if seen[v.ID] {
			continue
		}
		seen[v.ID] = true
		if v.PublicKey != nil {
			pubs[v.ID] = v.PublicKey
		}
		out = append(out, v)
	}
	b.remember(pubs)
	return out, nil
}

// aliasTargets lists the aliases under the URI's prefix and returns the key
// ids they point to, in alias order. No alias under the prefix is
// backends.ErrNotFound: a prefix that names nothing is a mistake, not an
// empty key set.
func (b *Backend) aliasTargets(ctx context.Context) ([]string, error) {
	prefix := b.target.prefix
	byARN := strings.HasPrefix(prefix, "arn:")
	var (
		marker  *string
		targets []string
		read    int
	)
	for {
		var page *kms.ListAliasesOutput
		err := b.caller.Do(ctx, func(ctx context.Context) error {
			var err error
			page, err = b.client.ListAliases(ctx, &kms.ListAliasesInput{Marker: marker, Limit: aws.Int32(100)})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("awskms: list aliases under %s: %w", prefix, err)
		}
		for _, a := range page.Aliases {
			name := aws.ToString(a.AliasName)
			if byARN {
				name = aws.ToString(a.AliasArn)
			}
			if !strings.HasPrefix(name, prefix) || aws.ToString(a.TargetKeyId) == "" {
				continue
			}
			targets = append(targets, aws.ToString(a.TargetKeyId))
		}
		read += len(page.Aliases)
		if !page.Truncated || aws.ToString(page.NextMarker) == "" {
			break
		}
		if read >= maxAliases {
			return nil, fmt.Errorf("awskms: list aliases under %s: more than %d aliases; giving up", prefix, maxAliases)
		}
		marker = page.NextMarker
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("awskms: %w: no alias under %s (in region %s)", backends.ErrNotFound, prefix, b.client.Options().Region)
	}
	return targets, nil
}

// describe reads one key: its ARN, creation time and state, and for an
// Enabled key its type and public key.
func (b *Backend) describe(ctx context.Context, ref string) (backends.Version, error) {
	var d *kms.DescribeKeyOutput
	err := b.caller.Do(ctx, func(ctx context.Context) error {
		var err error
		d, err = b.client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(ref)})
		return err
	})
	if err != nil {
		return backends.Version{}, fmt.Errorf("awskms: describe key %s: %w", ref, err)
	}
	m := d.KeyMetadata
	if m == nil || aws.ToString(m.Arn) == "" || m.CreationDate == nil {
		return backends.Version{}, fmt.Errorf("awskms: describe key %s: %w: answer without the key's ARN or creation date", ref, backends.ErrIntegrity)
	}
	arn := aws.ToString(m.Arn)
	v := backends.Version{ID: arn, Created: *m.CreationDate, State: mapState(m.KeyState)}
	if v.State != backends.StateEnabled {
		return v, nil
	}
	if err := checkType(ref, arn, m.KeySpec, m.KeyUsage, m.SigningAlgorithms); err != nil {
		return backends.Version{}, err
	}
	if pub := (*b.pubs.Load())[arn]; pub != nil {
		v.PublicKey = pub
		return v, nil
	}
	var p *kms.GetPublicKeyOutput
	err = b.caller.Do(ctx, func(ctx context.Context) error {
		var err error
		p, err = b.client.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(arn)})
		return err
	})
	if err != nil {
		return backends.Version{}, fmt.Errorf("awskms: get public key of %s: %w", arn, err)
	}
	if got := aws.ToString(p.KeyId); got != arn {
		return backends.Version{}, fmt.Errorf("awskms: get public key of %s: %w: the answer is for %q", arn, backends.ErrIntegrity, got)
	}
	if err := checkType(ref, arn, p.KeySpec, p.KeyUsage, p.SigningAlgorithms); err != nil {
		return backends.Version{}, err
	}
	parsed, err := x509.ParsePKIXPublicKey(p.PublicKey)
	if err != nil {
		return backends.Version{}, fmt.Errorf("awskms: public key of %s: %w: %v", arn, backends.ErrIntegrity, err)
	}
	pub, err := backends.CheckP256("awskms: key "+arn, parsed)
	if err != nil {
		return backends.Version{}, err
	}
	v.PublicKey = pub
	return v, nil
}

// checkType refuses a key that cannot make ES256 signatures, naming the key,
// its spec and its usage.
func checkType(ref, arn string, spec types.KeySpec, usage types.KeyUsageType, algs []types.SigningAlgorithmSpec) error {
	name := arn
	if ref != arn {
		name = fmt.Sprintf("%s (%s)", arn, ref)
	}
	if spec != types.KeySpecEccNistP256 || usage != types.KeyUsageTypeSignVerify {
		return fmt.Errorf("awskms: key %s: %w: key spec %s with key usage %s; want ECC_NIST_P256 with SIGN_VERIFY", name, backends.ErrKeyType, orNone(string(spec)), orNone(string(usage)))
	}
	if algs != nil && !slices.Contains(algs, types.SigningAlgorithmSpecEcdsaSha256) {
		return fmt.Errorf("awskms: key %s: %w: signing algorithms %v do not include ECDSA_SHA_256", name, backends.ErrKeyType, algs)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// mapState maps an AWS key state to a version state. Updating (a
// multi-Region key changing its primary Region) still signs; a state this
// code does not know is treated as unavailable.
func mapState(s types.KeyState) backends.State {
	switch s {
	case types.KeyStateEnabled, types.KeyStateUpdating:
		return backends.StateEnabled
	case types.KeyStateDisabled:
		return backends.StateDisabled
	case types.KeyStatePendingDeletion, types.KeyStatePendingReplicaDeletion:
		return backends.StatePendingDeletion
	case types.KeyStatePendingImport:
		return backends.StatePendingImport
	case types.KeyStateCreating:
		return backends.StatePendingGeneration
	default:
		return backends.StateUnavailable
	}
}

// remember adds public keys to the cache Sign verifies against. Entries are
// never removed: a key's public key never changes, and a signature with a
// key that was dropped is refused by AWS, not by a missing cache entry.
func (b *Backend) remember(pubs map[string]*ecdsa.PublicKey) {
	if len(pubs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := *b.pubs.Load()
	if len(old) > 0 {
		add := false
		for k := range pubs {
			if old[k] == nil {
				add = true
				break
			}
		}
		if !add {
			return
		}
	}
	next := maps.Clone(old)
	maps.Copy(next, pubs)
	b.pubs.Store(&next)
}
