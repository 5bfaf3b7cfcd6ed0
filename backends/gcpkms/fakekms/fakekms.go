// Package fakekms is an in-process fake of the Cloud KMS KeyManagementService,
// for tests only. It serves the methods kmsgate's gcpkms backend calls
// (GetCryptoKey, ListCryptoKeyVersions, GetCryptoKeyVersion, GetPublicKey,
// AsymmetricSign) over real gRPC on 127.0.0.1, with real keys, and behaves
// like Cloud KMS where the backend depends on it: version states, status
// codes, CRC32C integrity fields, paging and filters. Tests steer it through
// a Go API: create keys and versions, change states, deny access, and inject
// latency, errors and corrupted answers.
//
// Nothing outside tests imports this package.
package fakekms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Method names, as used in Fault.Method and Calls.
const (
	GetCryptoKey          = "GetCryptoKey"
	ListCryptoKeyVersions = "ListCryptoKeyVersions"
	GetCryptoKeyVersion   = "GetCryptoKeyVersion"
	GetPublicKey          = "GetPublicKey"
	AsymmetricSign        = "AsymmetricSign"
)

// Corruption says how a fault damages a successful answer.
type Corruption uint

const (
	// SignatureCRC makes signature_crc32c disagree with the signature.
	SignatureCRC Corruption = 1 << iota
	// SignatureBytes flips a bit of the signature after its CRC was computed,
	// as corruption in transit would.
	SignatureBytes
	// UnverifiedDigest answers verified_digest_crc32c = false, as if the
	// request's digest_crc32c had not arrived.
	UnverifiedDigest
	// WrongName names another version in the answer's name field
	// (AsymmetricSign, GetPublicKey, GetCryptoKeyVersion).
	WrongName
	// PEMCRC makes pem_crc32c disagree with the PEM.
	PEMCRC
	// WrongKey signs with a key other than the version's, with consistent
	// CRCs: only verifying the signature finds it.
	WrongKey
)

// Fault is an injected misbehaviour for the calls it matches.
type Fault struct {
	// Method is the method it applies to (AsymmetricSign, …); "" for all.
	Method string
	// Name is the resource name it applies to; "" for all.
	Name string
	// Times is how many matching calls it affects; 0 means every one until
	// ClearFaults.
	Times int
	// Delay holds the answer back this long; the call still ends as soon as
	// the client gives up.
	Delay time.Duration
	// Code, when not codes.OK, is the status the call fails with.
	Code codes.Code
	// Corrupt damages a successful answer.
	Corrupt Corruption
}

// VersionSpec describes a new key version.
type VersionSpec struct {
	// Algorithm defaults to the key's version template algorithm.
	Algorithm kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	// State defaults to ENABLED.
	State kmspb.CryptoKeyVersion_CryptoKeyVersionState
	// Created defaults to the server clock's now.
	Created time.Time
	// Key, when set, is the version's key material (its type must match the
	// algorithm); by default a new key is generated. A fake started again
	// with the same keys serves the same versions, as a restarted service
	// would.
	Key crypto.Signer
}

type cryptoKey struct {
	name     string
	purpose  kmspb.CryptoKey_CryptoKeyPurpose
	alg      kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	created  time.Time
	versions []*version
}

type version struct {
	name      string
	key       *cryptoKey
	alg       kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	state     kmspb.CryptoKeyVersion_CryptoKeyVersionState
	created   time.Time
	generated time.Time
	signer    crypto.Signer // nil once destroyed, and for symmetric keys
}

// Server is the fake KeyManagementService. Its methods are safe for
// concurrent use.
type Server struct {
	kmspb.UnimplementedKeyManagementServiceServer

	mu          sync.Mutex
	keys        map[string]*cryptoKey
	versions    map[string]*version
	denied      []string
	faults      []*Fault
	latency     time.Duration
	maxPageSize int
	calls       map[string]int
	filters     []string
	now         func() time.Time
	otherKey    *ecdsa.PrivateKey

	grpc *grpc.Server
	lis  net.Listener
}

// New returns an empty fake with the real clock.
func New() *Server {
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return &Server{
		keys:        map[string]*cryptoKey{},
		versions:    map[string]*version{},
		calls:       map[string]int{},
		now:         time.Now,
		maxPageSize: 1000,
		otherKey:    other,
	}
}

// Start serves the fake on addr ("127.0.0.1:0" for a free port) and returns
// the address it listens on.
func (s *Server) Start(addr string) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("fakekms: listen: %w", err)
	}
	g := grpc.NewServer()
	kmspb.RegisterKeyManagementServiceServer(g, s)
	s.mu.Lock()
	s.grpc, s.lis = g, lis
	s.mu.Unlock()
	go func() { _ = g.Serve(lis) }()
	return lis.Addr().String(), nil
}

// Stop ends every call in flight and closes the listener.
func (s *Server) Stop() {
	s.mu.Lock()
	g := s.grpc
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// SetClock replaces the clock that stamps create and generate times.
func (s *Server) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// SetLatency delays every answer by d (0 for none).
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetMaxPageSize caps the versions in one ListCryptoKeyVersions page, as the
// service may return fewer than asked.
func (s *Server) SetMaxPageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxPageSize = max(1, n)
}

// Deny makes every call on a resource whose name starts with prefix fail with
// PermissionDenied, as a missing IAM grant does.
func (s *Server) Deny(prefix string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denied = append(s.denied, prefix)
}

// Inject adds a fault. Faults stack: every matching fault applies.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// ClearFaults removes every fault and denial.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults, s.denied = nil, nil
}

// Calls returns how many calls of method the fake has received.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// Filters returns the filter of every ListCryptoKeyVersions request so far.
func (s *Server) Filters() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.filters)
}

var (
	keyNameRE     = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$`)
	versionNameRE = regexp.MustCompile(`^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+)/cryptoKeyVersions/([1-9][0-9]*)$`)
)

// CreateKey creates a CryptoKey named name (projects/…/cryptoKeys/K) with a
// purpose and the algorithm of its version template. It has no versions.
func (s *Server) CreateKey(name string, purpose kmspb.CryptoKey_CryptoKeyPurpose, alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm) error {
	if !keyNameRE.MatchString(name) {
		return fmt.Errorf("fakekms: %q is not a CryptoKey name", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.keys[name]; dup {
		return fmt.Errorf("fakekms: %s exists", name)
	}
	s.keys[name] = &cryptoKey{name: name, purpose: purpose, alg: alg, created: s.now()}
	return nil
}

// AddVersion creates the next version of key and returns its name. Key
// material is generated now, but only used once the version is ENABLED.
func (s *Server) AddVersion(key string, spec VersionSpec) (string, error) {
	s.mu.Lock()
	k, ok := s.keys[key]
	if !ok {
		s.mu.Unlock()
		return "", fmt.Errorf("fakekms: no key %s", key)
	}
	if spec.Algorithm == 0 {
		spec.Algorithm = k.alg
	}
	if spec.State == 0 {
		spec.State = kmspb.CryptoKeyVersion_ENABLED
	}
	if spec.Created.IsZero() {
		spec.Created = s.now()
	}
	s.mu.Unlock()
	signer := spec.Key
	if signer != nil {
		if err := keyFits(signer, spec.Algorithm); err != nil {
			return "", err
		}
	} else {
		var err error
		if signer, err = generate(spec.Algorithm); err != nil {
			return "", err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := &version{
		name:    fmt.Sprintf("%s/cryptoKeyVersions/%d", key, len(k.versions)+1),
		key:     k,
		alg:     spec.Algorithm,
		state:   spec.State,
		created: spec.Created,
		signer:  signer,
	}
	if v.state == kmspb.CryptoKeyVersion_ENABLED {
		v.generated = v.created
	}
	k.versions = append(k.versions, v)
	s.versions[v.name] = v
	return v.name, nil
}

// keyFits checks that a given key is of the kind alg signs with.
func keyFits(k crypto.Signer, alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm) error {
	var ok bool
	switch pub := k.Public().(type) {
	case *ecdsa.PublicKey:
		ok = (alg == kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256 && pub.Curve == elliptic.P256()) ||
			(alg == kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384 && pub.Curve == elliptic.P384())
	case *rsa.PublicKey:
		ok = alg == kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256 && pub.N.BitLen() == 2048
	}
	if !ok {
		return fmt.Errorf("fakekms: a %T key does not fit algorithm %s", k.Public(), alg)
	}
	return nil
}

func generate(alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm) (crypto.Signer, error) {
	switch alg {
	case kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256:
		return rsa.GenerateKey(rand.Reader, 2048)
	case kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION:
		return nil, nil
	}
	return nil, fmt.Errorf("fakekms: algorithm %s is not supported by the fake", alg)
}

// SetState moves a version to state, as UpdateCryptoKeyVersion,
// DestroyCryptoKeyVersion or the end of key generation would. Destroying a
// version discards its key material.
func (s *Server) SetState(name string, state kmspb.CryptoKeyVersion_CryptoKeyVersionState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.versions[name]
	if !ok {
		return fmt.Errorf("fakekms: no version %s", name)
	}
	if v.state == kmspb.CryptoKeyVersion_DESTROYED && state != kmspb.CryptoKeyVersion_DESTROYED {
		return fmt.Errorf("fakekms: %s is destroyed", name)
	}
	if state == kmspb.CryptoKeyVersion_ENABLED && v.generated.IsZero() {
		v.generated = s.now()
	}
	if state == kmspb.CryptoKeyVersion_DESTROYED {
		v.signer = nil
	}
	v.state = state
	return nil
}

// PublicKey returns the public key of a version, for tests to compare with.
func (s *Server) PublicKey(name string) (crypto.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.versions[name]
	if !ok || v.signer == nil {
		return nil, fmt.Errorf("fakekms: no key material for %s", name)
	}
	return v.signer.Public(), nil
}

// CRC32C is the Castagnoli CRC Cloud KMS uses in its integrity fields.
func CRC32C(b []byte) int64 {
	return int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

// begin records a call, applies latency, denials and faults, and returns the
// corruption to apply to a successful answer.
func (s *Server) begin(ctx context.Context, method, name string) (Corruption, error) {
	s.mu.Lock()
	s.calls[method]++
	delay := s.latency
	var code codes.Code
	var corrupt Corruption
	kept := s.faults[:0]
	for _, f := range s.faults {
		if (f.Method == "" || f.Method == method) && (f.Name == "" || f.Name == name) {
			delay += f.Delay
			if f.Code != codes.OK && code == codes.OK {
				code = f.Code
			}
			corrupt |= f.Corrupt
			if f.Times > 0 {
				f.Times--
				if f.Times == 0 {
					continue
				}
			}
		}
		kept = append(kept, f)
	}
	s.faults = kept
	denied := slices.ContainsFunc(s.denied, func(p string) bool { return strings.HasPrefix(name, p) })
	s.mu.Unlock()

	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
	if code != codes.OK {
		return 0, status.Errorf(code, "fakekms: injected %s for %s", code, method)
	}
	if denied {
		return 0, status.Errorf(codes.PermissionDenied, "Permission 'cloudkms.%s' denied on resource '%s' (or it may not exist).", method, name)
	}
	return corrupt, nil
}

func (s *Server) lookupKey(name string) (*cryptoKey, error) {
	if !keyNameRE.MatchString(name) {
		return nil, status.Errorf(codes.InvalidArgument, "Resource name [%s] does not match any known pattern (want projects/*/locations/*/keyRings/*/cryptoKeys/*).", name)
	}
	k, ok := s.keys[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found.", name)
	}
	return k, nil
}

func (s *Server) lookupVersion(name string) (*version, error) {
	if !versionNameRE.MatchString(name) {
		return nil, status.Errorf(codes.InvalidArgument, "Resource name [%s] does not match any known pattern (want projects/*/locations/*/keyRings/*/cryptoKeys/*/cryptoKeyVersions/*).", name)
	}
	v, ok := s.versions[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found.", name)
	}
	return v, nil
}

func (v *version) proto() *kmspb.CryptoKeyVersion {
	p := &kmspb.CryptoKeyVersion{
		Name:            v.name,
		State:           v.state,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
		Algorithm:       v.alg,
		CreateTime:      timestamppb.New(v.created),
	}
	if !v.generated.IsZero() {
		p.GenerateTime = timestamppb.New(v.generated)
	}
	return p
}

// GetCryptoKey implements kmspb.KeyManagementServiceServer.
func (s *Server) GetCryptoKey(ctx context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	if _, err := s.begin(ctx, GetCryptoKey, req.GetName()); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.lookupKey(req.GetName())
	if err != nil {
		return nil, err
	}
	return &kmspb.CryptoKey{
		Name:       k.name,
		Purpose:    k.purpose,
		CreateTime: timestamppb.New(k.created),
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
			ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
			Algorithm:       k.alg,
		},
	}, nil
}

// GetCryptoKeyVersion implements kmspb.KeyManagementServiceServer.
// The WrongName corruption applies.
func (s *Server) GetCryptoKeyVersion(ctx context.Context, req *kmspb.GetCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	corrupt, err := s.begin(ctx, GetCryptoKeyVersion, req.GetName())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.lookupVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	p := v.proto()
	if corrupt&WrongName != 0 {
		p.Name = otherName(p.Name)
	}
	return p, nil
}

// ListCryptoKeyVersions implements kmspb.KeyManagementServiceServer, with
// paging (page tokens are bound to the filter) and the filter language's
// =, !=, :, NOT, AND, OR and parentheses on name, state, algorithm and
// protection_level.
func (s *Server) ListCryptoKeyVersions(ctx context.Context, req *kmspb.ListCryptoKeyVersionsRequest) (*kmspb.ListCryptoKeyVersionsResponse, error) {
	if _, err := s.begin(ctx, ListCryptoKeyVersions, req.GetParent()); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.filters = append(s.filters, req.GetFilter())
	k, err := s.lookupKey(req.GetParent())
	if err != nil {
		return nil, err
	}
	if req.GetOrderBy() != "" {
		return nil, status.Errorf(codes.InvalidArgument, "fakekms: order_by is not supported")
	}
	if req.GetPageSize() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "page_size must not be negative")
	}
	match, err := parseFilter(req.GetFilter())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Invalid filter %q: %v", req.GetFilter(), err)
	}
	start := 0
	if t := req.GetPageToken(); t != "" {
		start, err = decodePageToken(t, req.GetFilter())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "Invalid page_token: %v", err)
		}
	}
	size := s.maxPageSize
	if n := int(req.GetPageSize()); n > 0 && n < size {
		size = n
	}
	var matched []*kmspb.CryptoKeyVersion
	for _, v := range k.versions {
		p := v.proto()
		if match(p) {
			matched = append(matched, p)
		}
	}
	resp := &kmspb.ListCryptoKeyVersionsResponse{TotalSize: int32(len(matched))}
	if start > len(matched) {
		start = len(matched)
	}
	end := min(start+size, len(matched))
	resp.CryptoKeyVersions = matched[start:end]
	if end < len(matched) {
		resp.NextPageToken = encodePageToken(end, req.GetFilter())
	}
	return resp, nil
}

func encodePageToken(offset int, filter string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(offset) + "\x00" + filter))
}

func decodePageToken(tok, filter string) (int, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, err
	}
	off, f, ok := strings.Cut(string(b), "\x00")
	if !ok || f != filter {
		return 0, errors.New("token does not belong to this request")
	}
	return strconv.Atoi(off)
}

// usable returns the FAILED_PRECONDITION error Cloud KMS gives for a version
// that is not ENABLED.
func (v *version) usable() error {
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return status.Errorf(codes.FailedPrecondition, "%s is not enabled, current state is: %s.", v.name, v.state)
	}
	if v.key.purpose != kmspb.CryptoKey_ASYMMETRIC_SIGN || v.signer == nil {
		return status.Errorf(codes.FailedPrecondition, "%s has purpose %s, not ASYMMETRIC_SIGN.", v.key.name, v.key.purpose)
	}
	return nil
}

// otherName is a version name that is not name, for the WrongName fault.
func otherName(name string) string {
	m := versionNameRE.FindStringSubmatch(name)
	if m == nil {
		return name + "-other"
	}
	n, _ := strconv.Atoi(m[2])
	return fmt.Sprintf("%s/cryptoKeyVersions/%d", m[1], n+1)
}

// GetPublicKey implements kmspb.KeyManagementServiceServer, in PEM format.
func (s *Server) GetPublicKey(ctx context.Context, req *kmspb.GetPublicKeyRequest) (*kmspb.PublicKey, error) {
	corrupt, err := s.begin(ctx, GetPublicKey, req.GetName())
	if err != nil {
		return nil, err
	}
	if f := req.GetPublicKeyFormat(); f != kmspb.PublicKey_PUBLIC_KEY_FORMAT_UNSPECIFIED && f != kmspb.PublicKey_PEM {
		return nil, status.Errorf(codes.InvalidArgument, "fakekms: public key format %s is not supported", f)
	}
	s.mu.Lock()
	v, err := s.lookupVersion(req.GetName())
	if err == nil {
		err = v.usable()
	}
	var pub crypto.PublicKey
	var alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	if err == nil {
		pub, alg = v.signer.Public(), v.alg
	}
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "marshal public key: %v", err)
	}
	p := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	resp := &kmspb.PublicKey{
		Pem:             p,
		Algorithm:       alg,
		PemCrc32C:       wrapperspb.Int64(CRC32C([]byte(p))),
		Name:            req.GetName(),
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}
	if corrupt&PEMCRC != 0 {
		resp.PemCrc32C = wrapperspb.Int64(resp.PemCrc32C.GetValue() ^ 1)
	}
	if corrupt&WrongName != 0 {
		resp.Name = otherName(resp.Name)
	}
	return resp, nil
}

// AsymmetricSign implements kmspb.KeyManagementServiceServer for digests.
// It checks the digest against digest_crc32c when one is sent, as Cloud KMS
// does, and answers with the DER signature and its integrity fields.
func (s *Server) AsymmetricSign(ctx context.Context, req *kmspb.AsymmetricSignRequest) (*kmspb.AsymmetricSignResponse, error) {
	corrupt, err := s.begin(ctx, AsymmetricSign, req.GetName())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	v, err := s.lookupVersion(req.GetName())
	if err == nil {
		err = v.usable()
	}
	var signer crypto.Signer
	var alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	if err == nil {
		signer, alg = v.signer, v.alg
		if corrupt&WrongKey != 0 {
			signer = s.otherKey
		}
	}
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if len(req.GetData()) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "fakekms: signing raw data is not supported; send a digest")
	}
	var digest []byte
	var hash crypto.Hash
	switch d := req.GetDigest().GetDigest().(type) {
	case *kmspb.Digest_Sha256:
		digest, hash = d.Sha256, crypto.SHA256
	case *kmspb.Digest_Sha384:
		digest, hash = d.Sha384, crypto.SHA384
	case *kmspb.Digest_Sha512:
		digest, hash = d.Sha512, crypto.SHA512
	default:
		return nil, status.Errorf(codes.InvalidArgument, "The request must contain a digest.")
	}
	if want := algorithmHash(alg); want != hash {
		return nil, status.Errorf(codes.InvalidArgument, "The digest type %s does not match the key algorithm %s.", hash, alg)
	}
	if len(digest) != hash.Size() {
		return nil, status.Errorf(codes.InvalidArgument, "The %s digest must be %d bytes long, got %d.", hash, hash.Size(), len(digest))
	}
	verified := false
	if c := req.GetDigestCrc32C(); c != nil {
		if c.GetValue() != CRC32C(digest) {
			return nil, status.Errorf(codes.InvalidArgument, "The checksum in field digest_crc32c did not match the data in field digest.")
		}
		verified = true
	}
	sig, err := signer.Sign(rand.Reader, digest, hash)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign: %v", err)
	}
	resp := &kmspb.AsymmetricSignResponse{
		Signature:            sig,
		SignatureCrc32C:      wrapperspb.Int64(CRC32C(sig)),
		VerifiedDigestCrc32C: verified,
		Name:                 req.GetName(),
		ProtectionLevel:      kmspb.ProtectionLevel_SOFTWARE,
	}
	if corrupt&SignatureCRC != 0 {
		resp.SignatureCrc32C = wrapperspb.Int64(resp.SignatureCrc32C.GetValue() ^ 1)
	}
	if corrupt&SignatureBytes != 0 {
		resp.Signature = slices.Clone(sig)
		resp.Signature[len(sig)-1] ^= 0x01
	}
	if corrupt&UnverifiedDigest != 0 {
		resp.VerifiedDigestCrc32C = false
	}
	if corrupt&WrongName != 0 {
		resp.Name = otherName(resp.Name)
	}
	return resp, nil
}

func algorithmHash(alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm) crypto.Hash {
	switch alg {
	case kmspb.CryptoKeyVersion_EC_SIGN_P384_SHA384:
		return crypto.SHA384
	case kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256, kmspb.CryptoKeyVersion_RSA_SIGN_PKCS1_2048_SHA256:
		return crypto.SHA256
	}
	return 0
}
