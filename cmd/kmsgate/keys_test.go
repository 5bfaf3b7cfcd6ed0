package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/jwks"
)

// TestPrintKeysNotesActiveByCreation: the active version of a URI ordered by
// creation carries the note that kmsgate cannot see when it was enabled;
// a PEM key (no creation time) does not.
func TestPrintKeysNotesActiveByCreation(t *testing.T) {
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	keys := []jwks.Key{
		{URI: "gcpkms://k", KID: "kid-1", Role: jwks.RoleActive, Version: backends.Version{ID: "1", Created: created, State: backends.StateEnabled}},
		{URI: "gcpkms://k", KID: "kid-2", Role: jwks.RolePending, ActiveFrom: created.Add(26 * time.Hour), Version: backends.Version{ID: "2", Created: created.Add(24 * time.Hour), State: backends.StateEnabled}},
	}
	var table, js bytes.Buffer
	if err := printKeys(&table, keys, 2*time.Hour, false); err != nil {
		t.Fatal(err)
	}
	if err := printKeys(&js, keys, 2*time.Hour, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "active*") || !strings.Contains(table.String(), "* active by creation time: if this version was enabled (again) less than 2h0m0s") {
		t.Errorf("table:\n%s", table.String())
	}
	if strings.Count(js.String(), `"note"`) != 1 {
		t.Errorf("json:\n%s", js.String())
	}
	table.Reset()
	pemKey := []jwks.Key{{URI: "file:///k.pem", KID: "kid-p", Role: jwks.RoleActive, Version: backends.Version{ID: "sha256:x", State: backends.StateEnabled}}}
	if err := printKeys(&table, pemKey, 2*time.Hour, false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(table.String(), "*") {
		t.Errorf("PEM key noted:\n%s", table.String())
	}
}

// TestGenkeyOut: --out writes a new 0600 file, refuses to overwrite, and
// the key serves as a relative file: URI.
func TestGenkeyOut(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key.pem")
	if _, errOut, code := run(t, nil, "genkey", "--out", path); code != 0 {
		t.Fatalf("genkey --out: %d %s", code, errOut)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v, want mode 0600", st, err)
	}
	before, _ := os.ReadFile(path)
	if _, errOut, code := run(t, nil, "genkey", "--out", path); code != 1 || !strings.Contains(errOut, "never overwrites") {
		t.Errorf("second genkey --out: %d %s", code, errOut)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("the key was overwritten")
	}
	cmd := exec.Command(kmsgateBinary(t), "jwks", "--key", "file:key.pem")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), `"kty":"EC"`) {
		t.Errorf("jwks --key file:key.pem in its folder: %v %s", err, out)
	}
}

// TestUnknownVariableWarns: a misspelled KMSGATE_* variable is not
// ignored silently: kmsgate warns and names the closest known one.
func TestUnknownVariableWarns(t *testing.T) {
	_, errOut, code := run(t, []string{"KMSGATE_KID_FROMAT=hex", "KMSGATE_NONSENSE_SETTING=1"}, "genkey")
	if code != 0 {
		t.Fatalf("genkey: %d %s", code, errOut)
	}
	for _, want := range []string{"KMSGATE_KID_FROMAT is set but no flag or backend reads it; did you mean KMSGATE_KID_FORMAT?", `KMSGATE_NONSENSE_SETTING is set but no flag or backend reads it"`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

// TestVaultAddrWithoutScheme: a VAULT_ADDR without a scheme is reported as
// what it is, naming the variable, not as an invalid key URI.
func TestVaultAddrWithoutScheme(t *testing.T) {
	_, errOut, code := run(t, []string{"VAULT_ADDR=127.0.0.1:8200", "VAULT_TOKEN=x"}, "keys", "--key", "hashivault://k")
	if code != 1 || !strings.Contains(errOut, `VAULT_ADDR "127.0.0.1:8200" must be a URL with a scheme and host`) || strings.Contains(errOut, "invalid key URI") {
		t.Errorf("exit %d, stderr %s", code, errOut)
	}
}

// TestConfigKeySpelling: config keys are kebab-case at every level; the
// snake_case spellings still work with a deprecation warning; unknown keys
// are named with their line and the known ones; decode errors speak of
// values, not Go types.
func TestConfigKeySpelling(t *testing.T) {
	key := writeFile(t, "k.pem", genkey(t))
	snake := writeFile(t, "snake.yaml", "kid_format: hex\nkey: [\"file://"+key+"\"]\nclients:\n  - name: a\n    token_sha256: "+strings.Repeat("ab", 32)+"\n    audiences: [x]\n    subjects: [x]\n    max_ttl: 5m\n")
	out, errOut, code := run(t, nil, "keys", "--json", "--config", snake)
	if code != 0 || !regexp.MustCompile(`"kid": "[0-9a-f]{64}"`).MatchString(out) {
		t.Fatalf("snake_case config: %d %s %s", code, out, errOut)
	}
	for _, want := range []string{"line 1: kid_format is deprecated; write kid-format", "line 5: clients: token_sha256 is deprecated; write token-sha256", "line 8: clients: max_ttl is deprecated; write max-ttl"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("no deprecation warning %q in:\n%s", want, errOut)
		}
	}
	for name, c := range map[string]struct{ yaml, want string }{
		"unknown nested": {"clients:\n  - name: a\n    token: x\n", `unknown key(s) "token" in clients entry 1 (line 3; known: audiences, cert-subject, claims, max-ttl, name, subjects, token-sha256)`},
		"unknown top":    {"kid-fromat: hex\n", `unknown key(s) "kid-fromat" (line 1)`},
		"bad duration":   {"issuer: https://x\nkey: [\"file://" + key + "\"]\nclients:\n  - name: a\n    token-sha256: x\n    audiences: [x]\n    subjects: [x]\n    max-ttl: soon\n", "want a duration such as 15m"},
		"not a mapping":  {"- a\n- b\n", "want a mapping of keys"},
	} {
		path := writeFile(t, "bad.yaml", c.yaml)
		_, errOut, code := run(t, nil, "serve", "--config", path, "--listen", "127.0.0.1:0")
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", name, code, errOut, c.want)
		}
		for _, goType := range []string{"time.Duration", "map[string]interface", "gateway.Client", "core.Client"} {
			if strings.Contains(errOut, goType) {
				t.Errorf("%s: a Go type in the error: %s", name, errOut)
			}
		}
	}
}
