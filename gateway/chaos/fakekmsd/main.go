// Command fakekmsd serves the Cloud KMS fake (backends/gcpkms/fakekms) as a
// process of its own, so that the fault-injection run can freeze it
// (SIGSTOP), kill it and start it again like the other backends' test
// servers. It creates one ASYMMETRIC_SIGN CryptoKey with one enabled
// EC_SIGN_P256_SHA256 version whose key is read from a PEM file, so that a
// restarted fakekmsd serves the same version:
//
//	fakekmsd -key projects/P/locations/L/keyRings/R/cryptoKeys/K -key-file k.pem \
//	    -created 2026-01-01T00:00:00Z -listen 127.0.0.1:0 -addr-file FILE
//
// It listens on loopback only and writes HOST:PORT to -addr-file once
// serving. It is a test tool.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"

	"github.com/kmsgate/kmsgate/backends/gcpkms/fakekms"
)

func main() {
	key := flag.String("key", "", "CryptoKey name, projects/P/locations/L/keyRings/R/cryptoKeys/K (required)")
	keyFile := flag.String("key-file", "", "PEM file with the P-256 private key of version 1 (required)")
	created := flag.String("created", "2026-01-01T00:00:00Z", "create time of version 1 (RFC 3339)")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback only)")
	addrFile := flag.String("addr-file", "", "file to write HOST:PORT to once serving (required)")
	flag.Parse()
	if err := run(*key, *keyFile, *created, *listen, *addrFile); err != nil {
		fmt.Fprintln(os.Stderr, "fakekmsd:", err)
		os.Exit(1)
	}
}

func run(key, keyFile, created, listen, addrFile string) error {
	if key == "" || keyFile == "" || addrFile == "" {
		return errors.New("-key, -key-file and -addr-file are required")
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-listen %q: only loopback addresses are allowed", listen)
	}
	at, err := time.Parse(time.RFC3339, created)
	if err != nil {
		return fmt.Errorf("-created: %w", err)
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return fmt.Errorf("-key-file %s: no PEM block", keyFile)
	}
	priv, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return fmt.Errorf("-key-file %s: %w", keyFile, err)
	}
	f := fakekms.New()
	if err := f.CreateKey(key, kmspb.CryptoKey_ASYMMETRIC_SIGN, kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256); err != nil {
		return err
	}
	if _, err := f.AddVersion(key, fakekms.VersionSpec{Key: priv, Created: at}); err != nil {
		return err
	}
	addr, err := f.Start(listen)
	if err != nil {
		return err
	}
	defer f.Stop()
	tmp := addrFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(addr+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, addrFile); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}
