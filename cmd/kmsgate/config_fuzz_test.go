package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/kmsgate/kmsgate/gateway"
)

// goTypes are spellings of Go types that a config file author should never
// have to read in an error.
var goTypes = []string{"time.Duration", "interface {}", "map[string]", "[]string", "gateway.", "core.", "route.", "url.URL", "main."}

func checkWords(t *testing.T, data []byte, msg string) {
	t.Helper()
	if strings.TrimSpace(msg) == "" {
		t.Fatalf("%q: refused without a reason", data)
	}
	for _, g := range goTypes {
		if strings.Contains(msg, g) && !bytes.Contains(data, []byte(g)) {
			t.Fatalf("%q: the error %q names the Go type %q", data, msg, g)
		}
	}
}

func serveCommand(t *testing.T) *cobra.Command {
	t.Helper()
	for _, c := range newRootCmd().Commands() {
		if c.Name() == "serve" {
			if err := c.ParseFlags(nil); err != nil { // merges the root's persistent flags, as a run does
				t.Fatal(err)
			}
			return c
		}
	}
	t.Fatal("no serve command")
	return nil
}

// FuzzConfig checks the config file reader and what serve does with its
// result, on any bytes: a refused file gets a usage error that names the
// file and says why in the user's words (no Go type names); an accepted
// one has only known keys, warns about each deprecated spelling with its
// line, and its normalized form (what serve decodes) reads back to the
// same values without warnings; filling the serve flags from it fails
// only with errors naming a config key it has; its clients and routes
// sections decode with errors in the user's words, and a route that does
// not prepare gets an error naming it.
func FuzzConfig(f *testing.F) {
	known := flagNames(newRootCmd())
	// Only the file may fill the flags here: no KMSGATE_ variable of a flag.
	for name := range known {
		if v, ok := os.LookupEnv(envName(name)); ok {
			os.Unsetenv(envName(name))
			f.Cleanup(func() { os.Setenv(envName(name), v) })
		}
	}
	hash := strings.Repeat("ab", 32)
	for _, s := range []string{
		"issuer: https://kmsgate.example.com\nkey: [\"file:///etc/kmsgate/keys.pem\", \"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k\"]\n" +
			"kid-format: hex\nrefresh: 30s\nlisten: 127.0.0.1:8080\ntrusted-proxy: [10.0.0.0/8]\nidentity: headers\nmax-body: 65536\n" +
			"clients:\n  - name: billing\n    token-sha256: " + hash + "\n    audiences: [app]\n    subjects: [\"svc-*\"]\n    max-ttl: 15m\n    claims: [scope]\n" +
			"routes:\n  - host: app.example.com\n    path: /api/\n    upstream: http://127.0.0.1:9000/base/\n    audience: app\n    identity: oidc\noidc: {}\n",
		"kid_format: hex\nkey: [\"file:///k.pem\"]\nclients:\n  - name: a\n    token_sha256: " + hash + "\n    max_ttl: 5m\n",
		"key: file:///a.pem,file:///b.pem\njwks-path: /x\nrequest-log-sample: 0.5\npublic-health: true\n",
		"clients:\n  - name: a\n    token: x\n", "kid-fromat: hex\n", "- a\n- b\n", "", "# nothing\n", "---\n",
		"refresh: soon\n", "refresh: 5\n", "max-body: 1e3\n", "max-body: [1, 2]\n", "issuer: {a: b}\n", "issuer: null\n",
		"clients: {}\n", "clients: [1]\n", "routes:\n  - path: /a/../b\n    upstream: ftp://x\n", "routes:\n  - upstream: http://u@h/\n",
		"routes:\n  - host: \"H:80\"\n    upstream: http://h/\n", "clients:\n  - name: a\n    max-ttl: soon\n",
		"a: &x 1\nissuer: *x\n", "<<: {issuer: x}\n", "issuer: !!binary aGVsbG8=\n", "issuer: x\nissuer: y\n",
		"routes: &r [{upstream: http://h/}]\nclients: *r\n", "routes: [{host: , path: /a/, upstream: http://h/}]\nclients: [{name: a, claims: }]\n", "? [a]\n: b\n", "a: 1\n---\nb: 2\n", "\t- tab\n", "key: [[a]]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const path = "fuzz.yaml"
		cfg, err := parseConfig(path, data, known)
		if err != nil {
			var ue usageError
			if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "config "+path+": ") {
				t.Fatalf("%q: %v; want a usage error naming the file", data, err)
			}
			checkWords(t, data, strings.TrimPrefix(err.Error(), "config "+path+": "))
			return
		}
		for k := range cfg.values {
			if !known[k] && !configSections[k] {
				t.Fatalf("%q: accepted the unknown key %q", data, k)
			}
		}
		for _, w := range cfg.warnings {
			if !strings.HasPrefix(w, "config "+path+" line ") || !strings.Contains(w, "deprecated") {
				t.Fatalf("%q: warning %q does not name the line", data, w)
			}
		}
		// The normalized document (keys respelled) reads back the same,
		// with no more warnings.
		var raw []byte
		if cfg.doc != nil {
			explicitNulls(cfg.doc)
			if raw, err = yaml.Marshal(cfg.doc); err != nil {
				t.Fatalf("%q: the normalized document does not marshal: %v", data, err)
			}
		}
		again, err := parseConfig(path, raw, known)
		if err != nil || !reflect.DeepEqual(again.values, cfg.values) || len(again.warnings) != 0 {
			t.Fatalf("%q normalized as %q reads back as %v, %v, %q; want %v", data, raw, again, err, again.warnings, cfg.values)
		}

		if err := applyConfig(serveCommand(t), cfg); err != nil {
			var ue usageError
			for _, line := range strings.Split(err.Error(), "\n") {
				key, _, _ := strings.Cut(strings.TrimPrefix(line, "config key "), ":")
				if _, ok := cfg.values[key]; !ok || !strings.HasPrefix(line, "config key ") || !errors.As(err, &ue) {
					t.Fatalf("%q: applying it: %q does not name one of its keys", data, line)
				}
			}
		}

		// As serve decodes the sections: from the parsed document.
		var sections configSectionsFile
		if cfg.doc == nil {
			return
		}
		if err := cfg.doc.Decode(&sections); err != nil {
			checkWords(t, data, yamlError(err))
			return
		}
		for i, r := range sections.Routes {
			name := fmt.Sprintf("route %d", i+1)
			if err := r.Prepare(name, gateway.DefaultAssertionHeader, "headers"); err != nil && !strings.HasPrefix(err.Error(), name+": ") {
				t.Fatalf("%q: route %d refused with %q, which does not name it", data, i+1, err)
			}
		}
	})
}

// explicitNulls spells every empty null value "null", so that the YAML
// written from the tree reads back the same: yaml.v3 writes an empty null
// inside a flow mapping ({key: }) as an empty quoted string.
func explicitNulls(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" && n.Value == "" {
		n.Value = "null"
	}
	for _, c := range n.Content {
		explicitNulls(c)
	}
}
