package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-go/tfprotov5"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
)

func TestCommittedSchemasLoad(t *testing.T) {
	all, err := committed()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"google": true, "aws": true, "vault": true, "azurerm": true}
	for _, nv := range all {
		name, version := nv[0], nv[1]
		delete(want, name)
		addr, s, err := loadEmbedded(name, version)
		if err != nil {
			t.Errorf("%s %s: %v", name, version, err)
			continue
		}
		if addr != "registry.terraform.io/hashicorp/"+name {
			t.Errorf("%s: provider address %s", name, addr)
		}
		if s.provider == nil || len(s.resources) == 0 {
			t.Errorf("%s: no provider configuration schema or no resources", name)
		}
	}
	for name := range want {
		t.Errorf("no committed schema for provider %s", name)
	}
}

// TestModulesUseCommittedTypes checks that every resource and data source
// type the modules and examples use is in the committed schemas, so that a
// new type fails here with the command to run rather than deep inside init.
func TestModulesUseCommittedTypes(t *testing.T) {
	all, err := committed()
	if err != nil {
		t.Fatal(err)
	}
	dirs := []string{"../../modules", "../../examples"}
	for _, nv := range all {
		_, s, err := loadEmbedded(nv[0], nv[1])
		if err != nil {
			t.Fatal(err)
		}
		resources, dataSources, err := usedTypes(dirs, nv[0]+"_")
		if err != nil {
			t.Fatal(err)
		}
		if len(resources) == 0 {
			t.Errorf("no %s resources found under %v: is the scan broken?", nv[0], dirs)
		}
		for typ, users := range resources {
			if _, ok := s.resources[typ]; !ok {
				t.Errorf("resource %s (used in %s) is not in schemas/%s_%s.json; regenerate it with `go run . cut` (see terraform/README.md)", typ, strings.Join(users, ", "), nv[0], nv[1])
			}
		}
		for typ, users := range dataSources {
			if _, ok := s.dataSources[typ]; !ok {
				t.Errorf("data source %s (used in %s) is not in schemas/%s_%s.json; regenerate it with `go run . cut` (see terraform/README.md)", typ, strings.Join(users, ", "), nv[0], nv[1])
			}
		}
	}
}

// TestKeysCannotBeDestroyedByAccident checks what terraform test cannot
// see: the lifecycle guards of the keys.
func TestKeysCannotBeDestroyedByAccident(t *testing.T) {
	data, err := os.ReadFile("../../modules/gcp-kms/main.tf")
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range []string{`resource "google_kms_crypto_key" "signing"`, `resource "google_kms_key_ring" "this"`} {
		block := resourceBlock(t, string(data), res)
		if !regexp.MustCompile(`(?m)^\s*lifecycle\s*\{\s*prevent_destroy\s*=\s*true\s*\}`).MatchString(block) {
			t.Errorf("%s has no lifecycle { prevent_destroy = true }", res)
		}
	}
	azure, err := os.ReadFile("../../modules/azure-keyvault/main.tf")
	if err != nil {
		t.Fatal(err)
	}
	block := resourceBlock(t, string(azure), `resource "azurerm_key_vault_key" "signing"`)
	if !regexp.MustCompile(`(?m)^\s*lifecycle\s*\{\s*prevent_destroy\s*=\s*true\s*\}`).MatchString(block) {
		t.Errorf("azurerm_key_vault_key.signing has no lifecycle { prevent_destroy = true }")
	}
}

// resourceBlock returns the text of a top-level block from its header to
// the closing brace at the start of a line.
func resourceBlock(t *testing.T, src, header string) string {
	t.Helper()
	i := strings.Index(src, header+" {")
	if i < 0 {
		t.Fatalf("no %s", header)
	}
	j := strings.Index(src[i:], "\n}\n")
	if j < 0 {
		t.Fatalf("%s is not closed", header)
	}
	return src[i : i+j+2]
}

func TestParseType(t *testing.T) {
	good := []struct {
		in   string
		want tftypes.Type
	}{
		{`"string"`, tftypes.String},
		{`"number"`, tftypes.Number},
		{`"bool"`, tftypes.Bool},
		{`"dynamic"`, tftypes.DynamicPseudoType},
		{`["list","string"]`, tftypes.List{ElementType: tftypes.String}},
		{`["set",["map","number"]]`, tftypes.Set{ElementType: tftypes.Map{ElementType: tftypes.Number}}},
		{`["object",{"a":"string","b":["list","bool"]}]`, tftypes.Object{AttributeTypes: map[string]tftypes.Type{"a": tftypes.String, "b": tftypes.List{ElementType: tftypes.Bool}}}},
		{`["object",{"a":"string"},["a"]]`, tftypes.Object{AttributeTypes: map[string]tftypes.Type{"a": tftypes.String}, OptionalAttributes: map[string]struct{}{"a": {}}}},
		{`["tuple",["string","number"]]`, tftypes.Tuple{ElementTypes: []tftypes.Type{tftypes.String, tftypes.Number}}},
	}
	for _, c := range good {
		got, err := parseType(json.RawMessage(c.in))
		if err != nil {
			t.Errorf("parseType(%s): %v", c.in, err)
			continue
		}
		if !got.Equal(c.want) {
			t.Errorf("parseType(%s) = %s, want %s", c.in, got, c.want)
		}
	}
	bad := map[string]string{
		``:                                "no type",
		`"str"`:                           `unknown primitive type "str"`,
		`["list"]`:                        "want a string or [kind, ...]",
		`["list","string","x"]`:           "takes one element type",
		`["frob","string"]`:               `unknown kind "frob"`,
		`["object",{"a":"str"}]`:          "object attribute a",
		`["object",{"a":"string"},["b"]]`: "optional attribute b is not an attribute",
		`{"a":1}`:                         "want a string or [kind, ...]",
	}
	for in, want := range bad {
		_, err := parseType(json.RawMessage(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseType(%s) = %v, want an error containing %q", in, err, want)
		}
	}
}

const fullDump = `{
  "format_version": "1.0",
  "provider_schemas": {
    "registry.terraform.io/hashicorp/demo": {
      "provider": {"version": 0, "block": {"attributes": {"region": {"type": "string", "optional": true, "description": "d", "description_kind": "plain"}}}},
      "resource_schemas": {
        "demo_key": {"version": 2, "block": {
          "attributes": {"name": {"type": "string", "required": true}, "id": {"type": "string", "computed": true}},
          "block_types": {"template": {"nesting_mode": "list", "max_items": 1, "block": {"attributes": {"algorithm": {"type": "string", "required": true}}}}}
        }},
        "demo_unused": {"version": 0, "block": {"attributes": {"x": {"type": "string", "optional": true}}}}
      },
      "data_source_schemas": {
        "demo_account": {"version": 0, "block": {"attributes": {"id": {"type": "string", "computed": true}}}}
      },
      "functions": {}
    }
  }
}`

func TestCutKeepsOnlyUsedTypes(t *testing.T) {
	dir := t.TempDir()
	tf := "resource \"demo_key\" \"k\" {\n  name = \"x\"\n}\n\ndata \"demo_account\" \"a\" {}\n\nresource \"other_thing\" \"o\" {}\n"
	if err := os.WriteFile(filepath.Join(dir, "main.tf"), []byte(tf), 0o644); err != nil {
		t.Fatal(err)
	}
	resources, dataSources, err := usedTypes([]string{dir}, "demo_")
	if err != nil {
		t.Fatal(err)
	}
	if len(resources) != 1 || resources["demo_key"] == nil || len(dataSources) != 1 || dataSources["demo_account"] == nil {
		t.Fatalf("usedTypes = %v, %v; want demo_key and demo_account only", resources, dataSources)
	}
	addr, out, err := cutDump([]byte(fullDump), resources, dataSources)
	if err != nil {
		t.Fatal(err)
	}
	if addr != "registry.terraform.io/hashicorp/demo" {
		t.Errorf("address %s", addr)
	}
	_, p, err := parseDump(out)
	if err != nil {
		t.Fatalf("the cut schema does not parse strictly: %v\n%s", err, out)
	}
	if _, ok := p.ResourceSchemas["demo_unused"]; ok || len(p.ResourceSchemas) != 1 || len(p.DataSourceSchemas) != 1 {
		t.Errorf("cut kept %v and %v", sortedKeys(p.ResourceSchemas), sortedKeys(p.DataSourceSchemas))
	}
	s, err := convert(p)
	if err != nil {
		t.Fatal(err)
	}
	key := s.resources["demo_key"]
	if key.Version != 2 || len(key.Block.Attributes) != 2 || len(key.Block.BlockTypes) != 1 {
		t.Fatalf("demo_key converted to %+v", key.Block)
	}
	tmpl := key.Block.BlockTypes[0]
	if tmpl.TypeName != "template" || tmpl.Nesting != tfprotov5.SchemaNestedBlockNestingModeList || tmpl.MaxItems != 1 || !tmpl.Block.Attributes[0].Required {
		t.Errorf("template block converted to %+v", tmpl)
	}
	if a := key.Block.Attributes[0]; a.Name != "id" || !a.Computed || a.Required {
		t.Errorf("attributes not sorted or flags lost: %+v", a)
	}

	// A type the dump lacks is an error naming the file that uses it.
	resources["demo_missing"] = []string{"x/main.tf"}
	if _, _, err := cutDump([]byte(fullDump), resources, dataSources); err == nil || !strings.Contains(err.Error(), "resource demo_missing (used in x/main.tf)") {
		t.Errorf("cut with a missing type: %v", err)
	}
}

func TestParseDumpIsStrict(t *testing.T) {
	// The full dump has descriptions and functions the committed form drops;
	// the provider reads only the committed form, and rejects anything else.
	if _, _, err := parseDump([]byte(fullDump)); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("parseDump(full dump) = %v, want an unknown field error", err)
	}
	two := `{"format_version":"1.0","provider_schemas":{"a":{"provider":{"block":{}}},"b":{"provider":{"block":{}}}}}`
	if _, _, err := parseDump([]byte(two)); err == nil || !strings.Contains(err.Error(), "want exactly 1") {
		t.Errorf("parseDump(two providers) = %v", err)
	}
	nested := `{"format_version":"1.0","provider_schemas":{"a":{"provider":{"block":{"attributes":{"n":{"nested_type":{"attributes":{},"nesting_mode":"single"},"optional":true}}}}}}}`
	_, p, err := parseDump([]byte(nested))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := convert(p); err == nil || !strings.Contains(err.Error(), "protocol 6") {
		t.Errorf("convert(nested attribute) = %v, want a protocol 6 error", err)
	}
}

func TestNameFromExecutable(t *testing.T) {
	name, version, err := nameFromExecutable("/m/registry.terraform.io/hashicorp/aws/6.48.0/linux_amd64/terraform-provider-aws_v6.48.0")
	if err != nil || name != "aws" || version != "6.48.0" {
		t.Errorf("got %q %q %v", name, version, err)
	}
	for _, bad := range []string{"schemaprovider", "terraform-provider-aws", "terraform-provider-_v1.0.0"} {
		if _, _, err := nameFromExecutable(bad); err == nil {
			t.Errorf("nameFromExecutable(%q) accepted", bad)
		}
	}
	if _, _, err := loadEmbedded("aws", "0.0.1"); err == nil || !strings.Contains(err.Error(), "no committed schema for provider aws version 0.0.1") {
		t.Errorf("loadEmbedded(unknown version) = %v", err)
	}
}
