package main

// The backends kmsgate can open, each registering its URI scheme.
import (
	_ "github.com/kmsgate/kmsgate/backends/awskms"
	_ "github.com/kmsgate/kmsgate/backends/azurekv"
	_ "github.com/kmsgate/kmsgate/backends/gcpkms"
	_ "github.com/kmsgate/kmsgate/backends/pem"
	_ "github.com/kmsgate/kmsgate/backends/vault"
)
