// Package backends defines the interface every key backend implements, the
// registry that opens a backend from its key URI, the typed errors the gateway
// maps to HTTP statuses, and helpers shared by the KMS backends.
package backends

import (
	"context"
	"crypto/ecdsa"
	"log/slog"
	"time"
)

// State is the lifecycle state of one key version as the backend reports it.
type State string

// Version states. Only StateEnabled versions sign; StateEnabled and
// StateVerifyOnly versions are published in the JWKS; every other state is
// dropped from the key set.
const (
	StateEnabled           State = "enabled"
	StateVerifyOnly        State = "verify_only" // published, but the backend will not sign with it (Vault below min_encryption_version)
	StateDisabled          State = "disabled"
	StateDestroyed         State = "destroyed"
	StatePendingGeneration State = "pending_generation"
	StatePendingDeletion   State = "pending_deletion"
	StatePendingImport     State = "pending_import"
	StateUnavailable       State = "unavailable"
	StateExpired           State = "expired" // past its expiry time (Azure Key Vault exp)
)

// Published reports whether a version in this state belongs in the JWKS.
func (s State) Published() bool { return s == StateEnabled || s == StateVerifyOnly }

// CanSign reports whether a version in this state may be chosen to sign.
func (s State) CanSign() bool { return s == StateEnabled }

// Version is one key version reported by a backend.
type Version struct {
	// ID is the backend's own identifier of the version, the one Sign takes:
	// a GCP CryptoKeyVersion name, an AWS key ARN, "NAME/vN" for Vault,
	// "#N" (1-based position) for PEM.
	ID string
	// PublicKey is the version's P-256 public key. Nil only when the state
	// is not published (a pending or destroyed version has no key yet).
	PublicKey *ecdsa.PublicKey
	// Created is when the backend created the version. Zero for PEM keys,
	// whose order is their position in the file.
	Created time.Time
	// State is the version's lifecycle state.
	State State
}

// Ordering says how the rotation rules pick the signing version of one URI.
type Ordering int

const (
	// ByCreation orders versions by creation time then ID; the newest version
	// published for at least the prepublish window signs (KMS backends).
	ByCreation Ordering = iota
	// FirstSigns keeps the backend's order; the first version signs and all
	// are published (Pomerium's PEM rule).
	FirstSigns
)

// Backend is one key URI: it lists the URI's key versions and signs SHA-256
// digests with one explicit version. Implementations are safe for concurrent
// use.
type Backend interface {
	// Kind names the backend for logs and metrics: "pem", "gcpkms",
	// "awskms", "vault" or "pkcs11".
	Kind() string
	// Ordering says which rotation rule applies to the versions.
	Ordering() Ordering
	// Remote reports whether signatures are made outside this process; the
	// signer verifies every remote signature before it is used.
	Remote() bool
	// Versions lists the URI's key versions, including unusable ones with
	// their state. It is a control-plane call: the gateway calls it on
	// refresh, never per signature.
	Versions(ctx context.Context) ([]Version, error)
	// Sign signs a SHA-256 digest with exactly the version id and returns
	// the 64-byte JOSE signature R||S. It fails if the backend reports that
	// another version signed.
	Sign(ctx context.Context, versionID string, digest []byte) ([]byte, error)
	// Close releases connections held by the backend.
	Close() error
}

// DeadlineBound is implemented by remote backends whose Sign returns by its
// context's deadline on its own (their tests prove it). The keyring calls
// such a backend inline; any other remote backend is called from a goroutine
// it can abandon at the deadline, which costs a scheduling hop per signature.
type DeadlineBound interface {
	HonorsDeadline() bool
}

// Options carries the process-wide settings a backend may use when opened.
type Options struct {
	// Logger receives the backend's log lines; never nil after Open.
	Logger *slog.Logger
	// QPS limits the calls per second this backend makes to its service
	// (--backend-qps); 0 means no limit.
	QPS float64
	// Dev is true in development mode (serve --dev) and in tests: settings
	// meant only for those, such as a PKCS#11 PIN written in the key URI,
	// are accepted.
	Dev bool
}
