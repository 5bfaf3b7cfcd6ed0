package main

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/kmsgate/kmsgate/gateway"
)

// configSections are the structured top-level keys of the config file that
// are not flags; the gateway decodes them itself.
var configSections = map[string]bool{"clients": true, "routes": true, "oidc": true, "policy": true}

// fileConfig is a parsed --config file: flag values by flag name, the YAML
// document for the structured sections (keys respelled in kebab-case, lines
// as in the file, for errors), and warnings about deprecated spellings to
// log.
type fileConfig struct {
	values   map[string]any
	doc      *yaml.Node
	warnings []string
}

// sectionKeys are the keys each entry of a structured section may have,
// from the yaml tags of the types it decodes into.
var sectionKeys = map[string][]string{
	"clients": yamlKeys(gateway.Client{}),
	"routes":  yamlKeys(gateway.Route{}),
}

// yamlKeys returns the yaml keys of a struct's fields.
func yamlKeys(v any) []string {
	var keys []string
	t := reflect.TypeOf(v)
	for i := 0; i < t.NumField(); i++ {
		if k, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); k != "" && k != "-" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// envName is the environment variable of a flag: KMSGATE_ and the flag name
// in upper case with dashes as underscores.
func envName(flag string) string {
	return "KMSGATE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// loadConfig reads the YAML file at path. Keys are kebab-case at every
// level, as the flags are (kid-format, token-sha256, max-ttl); snake_case
// spellings are accepted with a deprecation warning. Unknown keys are an
// error naming the key and its line, so that a typo never silently falls
// back to a default.
func loadConfig(path string, known map[string]bool) (*fileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parseConfig(path, data, known)
}

// parseConfig reads the YAML config data of the file at path (named in
// errors); see loadConfig.
func parseConfig(path string, data []byte, known map[string]bool) (*fileConfig, error) {
	cfg := &fileConfig{values: map[string]any{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, usagef("config %s: %s", path, yamlError(err))
	}
	if len(doc.Content) == 0 {
		return cfg, nil // an empty file
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, usagef("config %s: line %d: want a mapping of keys (such as kid-format: hex) at the top", path, top.Line)
	}
	var unknown []string
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		cfg.respell(path, k, "")
		if !known[k.Value] && !configSections[k.Value] {
			unknown = append(unknown, fmt.Sprintf("%q (line %d)", k.Value, k.Line))
			continue
		}
		allowed, ok := sectionKeys[k.Value]
		if !ok {
			continue
		}
		if v.Kind != yaml.SequenceNode {
			return nil, usagef("config %s: line %d: %s must be a list", path, v.Line, k.Value)
		}
		for n, entry := range v.Content {
			if entry.Kind != yaml.MappingNode {
				return nil, usagef("config %s: line %d: %s entry %d must be a mapping", path, entry.Line, k.Value, n+1)
			}
			for j := 0; j+1 < len(entry.Content); j += 2 {
				ek := entry.Content[j]
				cfg.respell(path, ek, k.Value+": ")
				if !slices.Contains(allowed, ek.Value) {
					unknown = append(unknown, fmt.Sprintf("%q in %s entry %d (line %d; known: %s)", ek.Value, k.Value, n+1, ek.Line, strings.Join(allowed, ", ")))
				}
			}
		}
	}
	if len(unknown) > 0 {
		return nil, usagef("config %s: unknown key(s) %s", path, strings.Join(unknown, ", "))
	}
	if err := top.Decode(&cfg.values); err != nil {
		return nil, usagef("config %s: %s", path, yamlError(err))
	}
	cfg.doc = top
	return cfg, nil
}

// respell turns a snake_case key into kebab-case, recording a deprecation
// warning.
func (c *fileConfig) respell(path string, k *yaml.Node, where string) {
	if !strings.Contains(k.Value, "_") {
		return
	}
	kebab := strings.ReplaceAll(k.Value, "_", "-")
	c.warnings = append(c.warnings, fmt.Sprintf("config %s line %d: %s%s is deprecated; write %s (keys are kebab-case, like the flags)", path, k.Line, where, k.Value, kebab))
	k.Value = kebab
}

// yamlError describes a YAML decoding error in the user's words: the
// types it names are Go's, which a config file author need not know.
func yamlError(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	for goType, words := range map[string]string{
		"time.Duration": "a duration such as 15m", "[]string": "a list", "map[string]interface {}": "a mapping",
		"string": "a text", "int": "a whole number", "int64": "a whole number", "float64": "a number", "bool": "true or false",
	} {
		msg = strings.ReplaceAll(msg, " into "+goType, ", want "+words)
	}
	msg = regexp.MustCompile(` into [\w.\[\]*]+`).ReplaceAllString(msg, "")
	msg = regexp.MustCompile(` in type [\w.]+`).ReplaceAllString(msg, "")
	return strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
}

// flagNames returns the names of every flag of cmd and its descendants.
func flagNames(cmd *cobra.Command) map[string]bool {
	names := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(cmd)
	return names
}

// applyConfig fills every flag of cmd that was not set on the command line
// from its environment variable, then from the config file.
func applyConfig(cmd *cobra.Command, cfg *fileConfig) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := setFlag(f, splitList(f, v)); err != nil {
				errs = append(errs, usagef("%s=%q: %v", envName(f.Name), redactValue(f.Name, v), err))
			}
			return
		}
		if cfg == nil {
			return
		}
		v, ok := cfg.values[f.Name]
		if !ok {
			return
		}
		var vals []string
		switch t := v.(type) {
		case []any:
			for _, e := range t {
				vals = append(vals, fmt.Sprint(e))
			}
		case map[string]any:
			errs = append(errs, usagef("config key %s: want a value or a list, got a mapping", f.Name))
			return
		case nil:
			return
		default:
			vals = splitList(f, fmt.Sprint(t))
		}
		if err := setFlag(f, vals); err != nil {
			errs = append(errs, usagef("config key %s: %v", f.Name, err))
		}
	})
	return errors.Join(errs...)
}

func isList(f *pflag.Flag) bool {
	_, ok := f.Value.(pflag.SliceValue)
	return ok
}

// splitList splits a comma-separated environment value for list flags.
func splitList(f *pflag.Flag, v string) []string {
	if !isList(f) {
		return []string{v}
	}
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func setFlag(f *pflag.Flag, vals []string) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		if err := sv.Replace(vals); err != nil {
			return err
		}
		f.Changed = true
		return nil
	}
	if len(vals) != 1 {
		return fmt.Errorf("want one value, got %d", len(vals))
	}
	if err := f.Value.Set(vals[0]); err != nil {
		return err
	}
	f.Changed = true
	return nil
}

// redactValue hides values of flags that may hold secrets in error messages.
func redactValue(name, v string) string {
	if strings.Contains(name, "token") || strings.Contains(name, "secret") {
		return "REDACTED"
	}
	return v
}

// backendVariables are the KMSGATE_* variables the backends read
// themselves, besides one per flag.
var backendVariables = []string{
	"KMSGATE_VAULT_AUTH", "KMSGATE_VAULT_AUTH_MOUNT", "KMSGATE_VAULT_ROLE", "KMSGATE_VAULT_K8S_TOKEN_PATH",
	"KMSGATE_VAULT_APPROLE_ROLE_ID", "KMSGATE_VAULT_APPROLE_SECRET_ID_FILE", "KMSGATE_GCPKMS_ENDPOINT",
}

// unknownVariables returns a warning for each KMSGATE_* variable in env that
// no flag or backend reads (a typo would otherwise be ignored silently),
// naming the closest known one when it is a likely misspelling. Variables
// of the test suite (KMSGATE_TEST_*, KMSGATE_REQUIRE_SERVERS) are left alone.
func unknownVariables(env []string, flags map[string]bool) []string {
	known := map[string]bool{}
	for f := range flags {
		known[envName(f)] = true
	}
	for _, v := range backendVariables {
		known[v] = true
	}
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "KMSGATE_") || known[name] || strings.HasPrefix(name, "KMSGATE_TEST_") || name == "KMSGATE_REQUIRE_SERVERS" {
			continue
		}
		msg := name + " is set but no flag or backend reads it"
		best, dist := "", 3
		for k := range known {
			if d := editDistance(name, k); d < dist || (d == dist && k < best) {
				best, dist = k, d
			}
		}
		if best != "" {
			msg += "; did you mean " + best + "?"
		}
		out = append(out, msg)
	}
	slices.Sort(out)
	return out
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
