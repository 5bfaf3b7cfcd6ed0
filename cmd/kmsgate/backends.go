package main

// The backends kmsgate can open, each registering its URI scheme. pkcs11 is
// compiled in only with cgo and the build tag pkcs11 (make build-pkcs11);
// without them its scheme answers that this build has no PKCS#11 support.
import (
	_ "github.com/kmsgate/kmsgate/backends/awskms"
	_ "github.com/kmsgate/kmsgate/backends/azurekv"
	_ "github.com/kmsgate/kmsgate/backends/gcpkms"
	_ "github.com/kmsgate/kmsgate/backends/pem"
	_ "github.com/kmsgate/kmsgate/backends/pkcs11"
	_ "github.com/kmsgate/kmsgate/backends/vault"
)
