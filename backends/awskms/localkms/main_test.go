package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// call posts one KMS JSON request and decodes the answer.
func call(t *testing.T, base, op string, in, out any) {
	t.Helper()
	body, _ := json.Marshal(in)
	req, _ := http.NewRequest("POST", base, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+op)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: status %d", op, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatal(err)
	}
}

// TestServe starts the command's server, creates a P-256 key, signs a
// digest and verifies the signature with the key's public key; then stops
// it through its context.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addr")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, addrFile, filepath.Join(dir, "data"), "127.0.0.1:0", "eu-west-2", "111122223333")
	}()
	var base string
	for i := 0; i < 100 && base == ""; i++ {
		b, _ := os.ReadFile(addrFile)
		base = strings.TrimSpace(string(b))
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("address file holds %q", base)
	}

	var created struct{ KeyMetadata struct{ Arn string } }
	call(t, base, "CreateKey", map[string]string{"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}, &created)
	var pub struct{ PublicKey []byte }
	call(t, base, "GetPublicKey", map[string]string{"KeyId": created.KeyMetadata.Arn}, &pub)
	digest := sha256.Sum256([]byte("localkms"))
	var signed struct {
		KeyId     string
		Signature []byte
	}
	call(t, base, "Sign", map[string]any{"KeyId": created.KeyMetadata.Arn, "Message": digest[:], "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_256"}, &signed)
	k, err := x509.ParsePKIXPublicKey(pub.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if signed.KeyId != created.KeyMetadata.Arn || !ecdsa.VerifyASN1(k.(*ecdsa.PublicKey), digest[:], signed.Signature) {
		t.Fatalf("signature by %s does not verify", signed.KeyId)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop")
	}
}

// TestLoopbackOnly: the command refuses to listen anywhere but loopback.
func TestLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0"} {
		err := run(context.Background(), filepath.Join(t.TempDir(), "a"), t.TempDir(), addr, "eu-west-2", "111122223333")
		if err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("-listen %s: %v, want a refusal", addr, err)
		}
	}
}
