//go:build !pkcs11 || !cgo

package pkcs11

import (
	"context"
	"fmt"
	"net/url"

	"github.com/kmsgate/kmsgate/backends"
)

// Supported reports whether this build can open pkcs11: key URIs: it needs
// cgo and the build tag pkcs11 (make build-pkcs11).
const Supported = false

func init() { backends.Register(Scheme, open) }

// open refuses every pkcs11: URI in a build without PKCS#11 support, after
// checking the URI so that a malformed one is reported as such.
func open(_ context.Context, u *url.URL, _ backends.Options) (backends.Backend, error) {
	p, err := parseURL(u, true)
	if err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("pkcs11: %s: %w: this kmsgate was built without PKCS#11 support (the static build); build it with cgo and the build tag pkcs11 (make build-pkcs11, or go build -tags pkcs11 ./cmd/kmsgate) or use the image's pkcs11 target", p, backends.ErrConfig)
}
