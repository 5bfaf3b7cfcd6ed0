package gateway

import (
	"crypto/sha256"
	"encoding/base64"
)

// etagOf returns a strong ETag for a fixed document.
func etagOf(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:]) + `"`
}
