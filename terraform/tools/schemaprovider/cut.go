package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// typeRef matches the blocks that name a resource or data source type in
// Terraform configurations and test files.
var typeRef = regexp.MustCompile(`(?m)^\s*(resource|data|mock_resource|mock_data)\s+"([A-Za-z0-9_]+)"`)

// usedTypes scans the .tf and .tftest.hcl files under dirs and returns the
// managed resource and data source types whose names start with prefix.
func usedTypes(dirs []string, prefix string) (resources, dataSources map[string][]string, err error) {
	resources, dataSources = map[string][]string{}, map[string][]string{}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if d.Name() == ".terraform" {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(p, ".tf") && !strings.HasSuffix(p, ".tftest.hcl") {
				return nil
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, m := range typeRef.FindAllStringSubmatch(string(data), -1) {
				kind, typ := m[1], m[2]
				if !strings.HasPrefix(typ, prefix) {
					continue
				}
				if kind == "resource" || kind == "mock_resource" {
					resources[typ] = append(resources[typ], p)
				} else {
					dataSources[typ] = append(dataSources[typ], p)
				}
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("scan %s: %w", dir, err)
		}
	}
	return resources, dataSources, nil
}

// cutDump keeps the provider configuration schema and the given types of a
// full schema dump. A type the dump does not have is an error naming the
// files that use it.
func cutDump(full []byte, resources, dataSources map[string][]string) (string, []byte, error) {
	var d dumpFile
	if err := json.Unmarshal(full, &d); err != nil {
		return "", nil, fmt.Errorf("parse dump: %w", err)
	}
	if len(d.ProviderSchemas) != 1 {
		return "", nil, fmt.Errorf("dump holds %d providers, want exactly 1", len(d.ProviderSchemas))
	}
	var addr string
	var p *providerSchema
	for addr, p = range d.ProviderSchemas {
	}
	if p == nil || p.Provider == nil {
		return "", nil, fmt.Errorf("dump: provider %s has no provider schema", addr)
	}
	out := &providerSchema{
		Provider:          p.Provider,
		ResourceSchemas:   map[string]*schemaJSON{},
		DataSourceSchemas: map[string]*schemaJSON{},
	}
	var missing []string
	for typ, users := range resources {
		s, ok := p.ResourceSchemas[typ]
		if !ok {
			missing = append(missing, fmt.Sprintf("resource %s (used in %s)", typ, strings.Join(users, ", ")))
			continue
		}
		out.ResourceSchemas[typ] = s
	}
	for typ, users := range dataSources {
		s, ok := p.DataSourceSchemas[typ]
		if !ok {
			missing = append(missing, fmt.Sprintf("data source %s (used in %s)", typ, strings.Join(users, ", ")))
			continue
		}
		out.DataSourceSchemas[typ] = s
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return "", nil, fmt.Errorf("%s has no %s", addr, strings.Join(missing, "; "))
	}
	b, err := json.MarshalIndent(dumpFile{FormatVersion: d.FormatVersion, ProviderSchemas: map[string]*providerSchema{addr: out}}, "", " ")
	if err != nil {
		return "", nil, err
	}
	// Check that what is committed is what the provider will accept.
	if _, cp, err := parseDump(b); err != nil {
		return "", nil, err
	} else if _, err := convert(cp); err != nil {
		return "", nil, err
	}
	return addr, append(b, '\n'), nil
}

func cut(args []string) error {
	fl := flag.NewFlagSet("cut", flag.ContinueOnError)
	dump := fl.String("dump", "", "full `terraform providers schema -json` dump of one provider")
	version := fl.String("version", "", "provider version the dump was taken from, e.g. 8.0.0")
	out := fl.String("out", "schemas", "directory to write NAME_VERSION.json into")
	var scan multiFlag
	fl.Var(&scan, "scan", "directory whose .tf and .tftest.hcl files say which types to keep (repeatable)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *dump == "" || *version == "" || len(scan) == 0 {
		return errors.New("cut needs -dump, -version and at least one -scan")
	}
	full, err := os.ReadFile(*dump)
	if err != nil {
		return err
	}
	var probe dumpFile
	if err := json.Unmarshal(full, &probe); err != nil {
		return fmt.Errorf("%s: %w", *dump, err)
	}
	var addr string
	for addr = range probe.ProviderSchemas {
	}
	name := path.Base(addr)
	resources, dataSources, err := usedTypes(scan, name+"_")
	if err != nil {
		return err
	}
	_, b, err := cutDump(full, resources, dataSources)
	if err != nil {
		return fmt.Errorf("%s: %w", *dump, err)
	}
	dst := filepath.Join(*out, name+"_"+*version+".json")
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s: %d resources, %d data sources\n", dst, len(resources), len(dataSources))
	return nil
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
