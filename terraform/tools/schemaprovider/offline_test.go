package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// terraformOrSkip returns the terraform binary. Without one the test skips,
// unless KMSGATE_REQUIRE_SERVERS is set (as scripts/test.sh does), where a
// missing tool is a failure.
func terraformOrSkip(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("terraform")
	if err != nil {
		if os.Getenv("KMSGATE_REQUIRE_SERVERS") != "" {
			t.Fatal("terraform is not on PATH and KMSGATE_REQUIRE_SERVERS is set; install Terraform 1.11 or later")
		}
		t.Skip("terraform is not on PATH")
	}
	return p
}

// offlineTerraform builds the provider into a filesystem mirror for the
// google schema and returns the environment that makes terraform use it.
func offlineTerraform(t *testing.T) []string {
	t.Helper()
	work := t.TempDir()
	dir := filepath.Join(work, "mirror", "registry.terraform.io", "hashicorp", "google", "8.0.0", runtime.GOOS+"_"+runtime.GOARCH)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "terraform-provider-google_v8.0.0"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	rc := filepath.Join(work, "terraformrc")
	cfg := fmt.Sprintf("provider_installation {\n  filesystem_mirror {\n    path    = %q\n    include = [\"registry.terraform.io/hashicorp/*\"]\n  }\n}\n", filepath.Join(work, "mirror"))
	if err := os.WriteFile(rc, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TF_") {
			env = append(env, kv)
		}
	}
	return append(env, "TF_CLI_CONFIG_FILE="+rc, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1", "TF_INPUT=0")
}

// runTerraform runs terraform in a copy of a testdata configuration and
// returns its combined output and whether it succeeded.
func runTerraform(t *testing.T, tf string, env []string, dir string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tf, append([]string{"-chdir=" + dir}, append(args, "-no-color")...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("terraform %v timed out\n%s", args, out)
	}
	return string(out), err == nil
}

func copyFixture(t *testing.T, name string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), name)
	src := filepath.Join("testdata", name)
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestOfflineTerraform shows that checks against the schema-only provider
// can fail: validate rejects the mistakes the real provider rejects, terraform
// test fails a wrong assertion, and nothing can be applied.
func TestOfflineTerraform(t *testing.T) {
	tf := terraformOrSkip(t)
	env := offlineTerraform(t)

	cases := []struct {
		fixture  string
		command  string // validate or test
		ok       bool
		contains string
	}{
		{"valid", "validate", true, "The configuration is valid"},
		{"valid", "test", true, "1 passed, 0 failed"},
		{"misspelled_argument", "validate", false, `An argument named "purpsoe" is not expected here`},
		{"missing_required", "validate", false, `The argument "key_ring" is required`},
		{"wrong_type", "validate", false, "Inappropriate value for attribute \"labels\""},
		{"block_as_attribute", "validate", false, `An argument named "version_template" is not expected here`},
		{"unknown_resource", "validate", false, `does not support resource type "google_kms_crypto_keyy"`},
		{"wrong_assertion", "test", false, "WRONG-ASSERTION-CAUGHT"},
		{"apply_refused", "test", false, "schema-only stand-in for offline validation and tests; it cannot apply changes to google_kms_crypto_key"},
	}
	for _, c := range cases {
		t.Run(c.fixture+"/"+c.command, func(t *testing.T) {
			dir := copyFixture(t, c.fixture)
			if out, ok := runTerraform(t, tf, env, dir, "init", "-backend=false"); !ok {
				t.Fatalf("terraform init failed:\n%s", out)
			}
			out, ok := runTerraform(t, tf, env, dir, c.command)
			if ok != c.ok {
				t.Fatalf("terraform %s succeeded=%v, want %v:\n%s", c.command, ok, c.ok, out)
			}
			if !strings.Contains(strings.Join(strings.Fields(out), " "), c.contains) {
				t.Fatalf("terraform %s output lacks %q:\n%s", c.command, c.contains, out)
			}
		})
	}
}
