package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/backendtest"
	"github.com/kmsgate/kmsgate/backends/vault"
	"github.com/kmsgate/kmsgate/jwks"
)

// TestVaultDown runs a Vault of its own (file storage, so that it can be
// stopped and started again with the same keys) behind a keyring, and takes
// it away in three ways: sealed, frozen (SIGSTOP: connections accepted, no
// answer) and killed. Each time signing fails with ErrUnavailable within the
// deadline while the last good JWKS keeps being served, and both signing and
// refreshing recover when Vault is back.
func TestVaultDown(t *testing.T) {
	p := startOwnVault(t)
	e := envAt(t, p.addr, p.token)
	name := keyName(t)
	e.createKey("transit", name, "ecdsa-p256")
	t.Setenv("VAULT_ADDR", p.addr)
	t.Setenv("VAULT_TOKEN", p.token)
	b := e.open("hashivault://" + name)
	vault.SetTiming(b, 0, 400*time.Millisecond)
	kr, err := jwks.NewKeyring([]jwks.Source{{URI: "hashivault://" + name, Backend: b}}, jwks.Config{Prepublish: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Refresh(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	served := kr.State().Document.JSON
	sign := func(deadline time.Duration) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		tok, _, err := kr.SignJWT(ctx, map[string]any{"sub": "alice", "exp": time.Now().Add(time.Minute).Unix()})
		if took := time.Since(start); took > deadline+300*time.Millisecond {
			t.Fatalf("SignJWT took %s with a %s deadline", took, deadline)
		}
		return tok, err
	}
	tok, err := sign(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.VerifyIndependently(t, tok, served)

	down := func(how string) {
		t.Helper()
		if _, err := sign(time.Second); !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("%s: sign: %v, want ErrUnavailable", how, err)
		}
		if _, err := b.Versions(ctxTimeout(t, time.Second)); !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("%s: versions: %v, want ErrUnavailable", how, err)
		}
		if err := kr.Refresh(ctxTimeout(t, time.Second)); err == nil {
			t.Fatalf("%s: refresh succeeded", how)
		}
		if !bytes.Equal(kr.State().Document.JSON, served) {
			t.Fatalf("%s: the JWKS changed while Vault was down", how)
		}
	}
	up := func(how string) {
		t.Helper()
		var tok string
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if tok, err = sign(2 * time.Second); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("%s: no recovery: %v", how, err)
		}
		if err := kr.Refresh(ctxTimeout(t, 5*time.Second)); err != nil {
			t.Fatalf("%s: refresh: %v", how, err)
		}
		if !bytes.Equal(kr.State().Document.JSON, served) {
			t.Fatalf("%s: the key set changed: %s", how, kr.State().Document.JSON)
		}
		backendtest.VerifyIndependently(t, tok, kr.State().Document.JSON)
	}

	// Sealed: Vault answers 503 "Vault is sealed".
	if err := e.admin.Sys().Seal(); err != nil {
		t.Fatal(err)
	}
	down("sealed")
	for _, k := range p.unsealKeys() {
		if _, err := e.admin.Sys().Unseal(k); err != nil {
			t.Fatal(err)
		}
	}
	up("unsealed")

	// Frozen: the process accepts connections but never answers.
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitStopped(t, p.cmd.Process.Pid)
	down("frozen")
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	up("thawed")

	// Killed: connection refused; started again on the same address and
	// storage.
	p.kill()
	down("killed")
	p.start()
	up("restarted")
}

// waitStopped waits (up to 5 s) until the kernel reports pid as stopped: a
// SIGSTOP is delivered asynchronously, and on a busy machine the process may
// still answer a request right after kill(2) returns.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		// The state follows the parenthesised command name.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'T' || stat[i+2] == 't') {
			return
		}
	}
	t.Fatalf("process %d did not stop after SIGSTOP", pid)
}
