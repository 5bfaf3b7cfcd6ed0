//go:build !pkcs11 || !cgo

package pkcs11_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/backends/pkcs11"
)

// TestWithoutSupport: a build without the tag refuses every pkcs11: URI
// with an error naming the tag, and still reports a malformed URI as such.
func TestWithoutSupport(t *testing.T) {
	if pkcs11.Supported {
		t.Fatal("Supported is true in a build without the tag")
	}
	_, err := backends.Open(context.Background(), "pkcs11:token=T;object=k?"+mod+"&pin-source=file:/run/pin", backends.Options{})
	if !errors.Is(err, backends.ErrConfig) || !strings.Contains(err.Error(), "built without PKCS#11 support") || !strings.Contains(err.Error(), "-tags pkcs11") {
		t.Fatalf("Open: %v", err)
	}
	_, err = backends.Open(context.Background(), "pkcs11:token=T?"+mod, backends.Options{})
	if !errors.Is(err, backends.ErrInvalidURI) {
		t.Fatalf("malformed URI: %v", err)
	}
}

// TestDefaultBinarySaysNoSupport: the default binary answers a pkcs11: key
// with that error and exits 1.
func TestDefaultBinarySaysNoSupport(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the kmsgate binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, backendtest.Binary(t), "keys", "--key", "pkcs11:token=T;object=k?"+mod+"&pin-source=file:/run/pin").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "built without PKCS#11 support") {
		t.Fatalf("kmsgate keys --key pkcs11:…: %v\n%s", err, out)
	}
}
