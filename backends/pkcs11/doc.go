// Package pkcs11 is the PKCS#11 backend: it signs with EC P-256 private keys
// that stay in a hardware security module (Thales Luna, Entrust nShield,
// YubiHSM 2, AWS CloudHSM, Utimaco, SoftHSM for tests) reached through the
// vendor's PKCS#11 library, loaded with github.com/miekg/pkcs11.
//
// The backend needs cgo: it is compiled only with the build tag pkcs11
// (make build-pkcs11). In any other build the pkcs11 scheme is still
// registered, checks the URI, and refuses it with an error that says the
// binary was built without PKCS#11 support.
//
// # Key URI (RFC 7512)
//
//	pkcs11:token=T;object=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin
//
// See ParseURI for every attribute. token, serial, manufacturer, model and
// slot-id select one token; object=LABEL selects every private key labelled
// LABEL, object=PREFIX* every private key whose label starts with PREFIX,
// and id=HEX (CKA_ID) narrows either to one key or selects by id alone. The
// user PIN comes from the file pin-source names, read again at every login
// so that a changed PIN file is picked up; pin-value (the PIN in the URI) is
// accepted only by tests and `kmsgate serve --dev`.
//
// # Versions and rotation
//
// Every selected private key is a key version, named "object=LABEL;id=HEX"
// (see VersionID). PKCS#11 keeps no creation time: CKA_START_DATE is
// optional, empty by default (SoftHSM, pkcs11-tool), only a date, and not
// settable with pkcs11-tool, and object handles and search order are not
// stable. A prepublish window timed from when each replica first saw a key
// would make replicas disagree. So the backend uses Pomerium's rule
// (backends.FirstSigns) over a stable order that operators set with any
// PKCS#11 tool: keys are ordered by CKA_ID, read as an unsigned big-endian
// number, then by label; the first key signs and every key is published.
// Rotation is the same three steps as Pomerium's PEM rotation:
//
//  1. add: generate the new key with the same label and a CKA_ID above the
//     signing key's; every replica publishes it at its next refresh while
//     the old key keeps signing. Wait at least --refresh plus the JWKS
//     max-age before the next step, so that every verifier has it.
//  2. swap: give the old key (its private and public objects) a CKA_ID above
//     the new key's (pkcs11-tool --set-id); the new key signs from the next
//     refresh and the old one stays published.
//  3. remove: once the tokens signed by the old key have expired, delete it;
//     the next refresh drops it from the JWKS.
//
// # Which keys are accepted
//
// Every selected private key must be an EC P-256 key (CKA_EC_PARAMS naming
// prime256v1) with CKA_SIGN true, CKA_SENSITIVE true (a key that can be read
// in clear is no better than a PEM file) and CKA_ALWAYS_AUTHENTICATE false
// (it would need the PIN again for each signature); anything else fails the
// listing with backends.ErrKeyType and an error naming the key and what it
// is. A key with CKA_EXTRACTABLE true works but is logged as a warning once:
// it can be exported wrapped from the HSM, which some backup schemes need.
// The public key is read from the public key object with the same label and
// CKA_ID (CKA_EC_POINT), or from the private key's CKA_PUBLIC_KEY_INFO. The
// first time a key is listed it signs a probe digest that is verified with
// that public key, so a public object that does not belong to the private
// key is refused (backends.ErrIntegrity) before it is ever published.
//
// # Sessions and signing
//
// Signing is CKM_ECDSA over the SHA-256 digest on a session taken from a
// pool of at most x-max-sessions (DefaultMaxSessions) read-only sessions,
// opened as needed and kept; a caller waits for a free session no longer
// than its context allows. The signature, R||S, is verified by the keyring
// against the version's public key before it is used (Remote is true). A
// session that the token closed, a token that was logged out or reset, or a
// key handle that became invalid is recovered once per signature: the pool
// is reopened (the token found again by its attributes), the user logs in
// again and the key is found again by label and CKA_ID. A wrong PIN is
// reported as backends.ErrPermission and backends.ErrConfig (serve refuses
// to start) and is not tried again until the PIN file changes, so that the
// gateway cannot lock the token by retrying it. The PIN is never logged.
//
// PKCS#11 calls cannot be cancelled. Handing each C_Sign to a goroutine
// the request could abandon at its deadline costs about 50 µs of CPU per
// signature on two cores (measured: bench_test.go), twice the budget, so
// the backend signs on the caller's goroutine and claims
// backends.DeadlineBound: waiting for a session ends at the deadline, and
// once one call has outlived its caller's deadline the token counts as
// hung and every later call fails at once with backends.ErrUnavailable
// until it answers. Only the calls already inside the library when the
// token hangs wait for the library's own timeout, which should be set below
// the request deadline.
package pkcs11
