// Command schemaprovider is a schema-only Terraform provider: it answers
// Terraform's plugin protocol from a committed provider schema so that
// `terraform init`, `validate` and `test` (with mock_provider) run with no
// network and no real provider.
//
// One binary serves every committed schema. Installed into a filesystem
// mirror as terraform-provider-NAME_vVERSION, it serves
// schemas/NAME_VERSION.json. Two subcommands maintain those files:
//
//	schemaprovider list
//	    prints "NAME VERSION" for every committed schema (for the mirror layout)
//	schemaprovider cut -dump FILE -version VERSION -scan DIR... -out DIR
//	    writes schemas/NAME_VERSION.json from a `terraform providers schema
//	    -json` dump, keeping only the resource and data source types that the
//	    .tf and .tftest.hcl files under the scanned directories use
package main

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/terraform-plugin-go/tfprotov5"
	"github.com/hashicorp/terraform-plugin-go/tfprotov5/tf5server"
)

//go:embed schemas/*.json
var schemaFS embed.FS

func main() {
	if err := run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "schemaprovider:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 1 {
		switch args[1] {
		case "list":
			return list(os.Stdout)
		case "cut":
			return cut(args[2:])
		default:
			return fmt.Errorf("unknown subcommand %q (want list or cut; Terraform starts the provider with no arguments)", args[1])
		}
	}
	name, version, err := nameFromExecutable(args[0])
	if err != nil {
		return err
	}
	addr, schemas, err := loadEmbedded(name, version)
	if err != nil {
		return err
	}
	return tf5server.Serve(addr, func() tfprotov5.ProviderServer {
		return &server{name: addr + " " + version, schemas: schemas}
	})
}

// nameFromExecutable parses the provider name and version out of a plugin
// file name, terraform-provider-NAME_vVERSION.
func nameFromExecutable(arg0 string) (string, string, error) {
	base := strings.TrimSuffix(filepath.Base(arg0), ".exe")
	rest, ok := strings.CutPrefix(base, "terraform-provider-")
	if !ok {
		return "", "", fmt.Errorf("started as %q: install this binary as terraform-provider-NAME_vVERSION (or run `schemaprovider list`)", base)
	}
	name, version, ok := strings.Cut(rest, "_v")
	if !ok || name == "" || version == "" {
		return "", "", fmt.Errorf("started as %q: want terraform-provider-NAME_vVERSION", base)
	}
	return name, version, nil
}

// committed lists the embedded schema files as name and version pairs.
func committed() ([][2]string, error) {
	files, err := fs.Glob(schemaFS, "schemas/*.json")
	if err != nil {
		return nil, err
	}
	var out [][2]string
	for _, f := range files {
		name, version, ok := strings.Cut(strings.TrimSuffix(path.Base(f), ".json"), "_")
		if !ok {
			return nil, fmt.Errorf("%s: want schemas/NAME_VERSION.json", f)
		}
		out = append(out, [2]string{name, version})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out, nil
}

func list(w *os.File) error {
	all, err := committed()
	if err != nil {
		return err
	}
	if len(all) == 0 {
		return errors.New("no committed schemas")
	}
	for _, nv := range all {
		fmt.Fprintf(w, "%s %s\n", nv[0], nv[1])
	}
	return nil
}

// loadEmbedded reads and converts the committed schema of one provider
// version, checking that the document names that provider.
func loadEmbedded(name, version string) (string, *protocolSchemas, error) {
	file := "schemas/" + name + "_" + version + ".json"
	data, err := schemaFS.ReadFile(file)
	if err != nil {
		return "", nil, fmt.Errorf("no committed schema for provider %s version %s (%s)", name, version, file)
	}
	addr, p, err := parseDump(data)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", file, err)
	}
	if path.Base(addr) != name {
		return "", nil, fmt.Errorf("%s: holds the schema of %s, not %s", file, addr, name)
	}
	s, err := convert(p)
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", file, err)
	}
	return addr, s, nil
}
