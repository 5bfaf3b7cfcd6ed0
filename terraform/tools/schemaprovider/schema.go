package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/hashicorp/terraform-plugin-go/tfprotov5"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
)

// dumpFile is the document `terraform providers schema -json` prints, which
// is also the format of the committed cut-down schemas.
type dumpFile struct {
	FormatVersion   string                     `json:"format_version"`
	ProviderSchemas map[string]*providerSchema `json:"provider_schemas"`
}

// providerSchema is one provider's entry of a dumpFile.
type providerSchema struct {
	Provider                 *schemaJSON            `json:"provider,omitempty"`
	ResourceSchemas          map[string]*schemaJSON `json:"resource_schemas,omitempty"`
	DataSourceSchemas        map[string]*schemaJSON `json:"data_source_schemas,omitempty"`
	EphemeralResourceSchemas map[string]*schemaJSON `json:"ephemeral_resource_schemas,omitempty"`
}

type schemaJSON struct {
	Version int64      `json:"version"`
	Block   *blockJSON `json:"block"`
}

type blockJSON struct {
	Attributes map[string]*attributeJSON `json:"attributes,omitempty"`
	BlockTypes map[string]*blockTypeJSON `json:"block_types,omitempty"`
	Deprecated bool                      `json:"deprecated,omitempty"`
}

type attributeJSON struct {
	Type       json.RawMessage `json:"type,omitempty"`
	NestedType json.RawMessage `json:"nested_type,omitempty"`
	Required   bool            `json:"required,omitempty"`
	Optional   bool            `json:"optional,omitempty"`
	Computed   bool            `json:"computed,omitempty"`
	Sensitive  bool            `json:"sensitive,omitempty"`
	Deprecated bool            `json:"deprecated,omitempty"`
	WriteOnly  bool            `json:"write_only,omitempty"`
}

type blockTypeJSON struct {
	NestingMode string     `json:"nesting_mode"`
	Block       *blockJSON `json:"block"`
	MinItems    int64      `json:"min_items,omitempty"`
	MaxItems    int64      `json:"max_items,omitempty"`
}

// parseDump decodes a schema document that must hold exactly one provider,
// rejecting fields it does not know so that nothing is silently dropped.
func parseDump(data []byte) (string, *providerSchema, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d dumpFile
	if err := dec.Decode(&d); err != nil {
		return "", nil, fmt.Errorf("parse schema document: %w", err)
	}
	if len(d.ProviderSchemas) != 1 {
		return "", nil, fmt.Errorf("schema document holds %d providers, want exactly 1", len(d.ProviderSchemas))
	}
	for addr, p := range d.ProviderSchemas {
		if p == nil || p.Provider == nil {
			return "", nil, fmt.Errorf("schema document: provider %s has no provider schema", addr)
		}
		return addr, p, nil
	}
	panic("unreachable")
}

// protocolSchemas is a provider schema converted to plugin protocol 5.
type protocolSchemas struct {
	provider           *tfprotov5.Schema
	resources          map[string]*tfprotov5.Schema
	dataSources        map[string]*tfprotov5.Schema
	ephemeralResources map[string]*tfprotov5.Schema
}

// convert turns a parsed provider schema into protocol 5 schemas.
func convert(p *providerSchema) (*protocolSchemas, error) {
	out := &protocolSchemas{
		resources:          map[string]*tfprotov5.Schema{},
		dataSources:        map[string]*tfprotov5.Schema{},
		ephemeralResources: map[string]*tfprotov5.Schema{},
	}
	var err error
	if out.provider, err = convertSchema(p.Provider); err != nil {
		return nil, fmt.Errorf("provider configuration: %w", err)
	}
	for _, set := range []struct {
		kind string
		in   map[string]*schemaJSON
		out  map[string]*tfprotov5.Schema
	}{
		{"resource", p.ResourceSchemas, out.resources},
		{"data source", p.DataSourceSchemas, out.dataSources},
		{"ephemeral resource", p.EphemeralResourceSchemas, out.ephemeralResources},
	} {
		for name, s := range set.in {
			c, err := convertSchema(s)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", set.kind, name, err)
			}
			set.out[name] = c
		}
	}
	return out, nil
}

func convertSchema(s *schemaJSON) (*tfprotov5.Schema, error) {
	if s == nil || s.Block == nil {
		return nil, errors.New("no block")
	}
	b, err := convertBlock(s.Block)
	if err != nil {
		return nil, err
	}
	b.Version = s.Version
	return &tfprotov5.Schema{Version: s.Version, Block: b}, nil
}

var nestingModes = map[string]tfprotov5.SchemaNestedBlockNestingMode{
	"single": tfprotov5.SchemaNestedBlockNestingModeSingle,
	"list":   tfprotov5.SchemaNestedBlockNestingModeList,
	"set":    tfprotov5.SchemaNestedBlockNestingModeSet,
	"map":    tfprotov5.SchemaNestedBlockNestingModeMap,
	"group":  tfprotov5.SchemaNestedBlockNestingModeGroup,
}

// convertBlock converts a block, with attributes and nested blocks sorted
// by name so the answer is the same on every run.
func convertBlock(b *blockJSON) (*tfprotov5.SchemaBlock, error) {
	out := &tfprotov5.SchemaBlock{Deprecated: b.Deprecated}
	for _, name := range sortedKeys(b.Attributes) {
		a := b.Attributes[name]
		if len(a.NestedType) > 0 {
			return nil, fmt.Errorf("attribute %s: nested attribute types need plugin protocol 6, which this provider does not speak", name)
		}
		if !a.Required && !a.Optional && !a.Computed {
			return nil, fmt.Errorf("attribute %s: neither required, optional nor computed", name)
		}
		t, err := parseType(a.Type)
		if err != nil {
			return nil, fmt.Errorf("attribute %s: %w", name, err)
		}
		out.Attributes = append(out.Attributes, &tfprotov5.SchemaAttribute{
			Name: name, Type: t, Required: a.Required, Optional: a.Optional, Computed: a.Computed,
			Sensitive: a.Sensitive, Deprecated: a.Deprecated, WriteOnly: a.WriteOnly,
		})
	}
	for _, name := range sortedKeys(b.BlockTypes) {
		bt := b.BlockTypes[name]
		mode, ok := nestingModes[bt.NestingMode]
		if !ok {
			return nil, fmt.Errorf("block %s: unknown nesting mode %q", name, bt.NestingMode)
		}
		if bt.Block == nil {
			return nil, fmt.Errorf("block %s: no block", name)
		}
		inner, err := convertBlock(bt.Block)
		if err != nil {
			return nil, fmt.Errorf("block %s: %w", name, err)
		}
		out.BlockTypes = append(out.BlockTypes, &tfprotov5.SchemaNestedBlock{
			TypeName: name, Block: inner, Nesting: mode, MinItems: bt.MinItems, MaxItems: bt.MaxItems,
		})
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// parseType decodes a type in cty's JSON form: "string", "number", "bool",
// "dynamic", ["list", T], ["set", T], ["map", T], ["object", {...}] (with an
// optional third element naming optional attributes) or ["tuple", [...]].
func parseType(raw json.RawMessage) (tftypes.Type, error) {
	if len(raw) == 0 {
		return nil, errors.New("no type")
	}
	var prim string
	if err := json.Unmarshal(raw, &prim); err == nil {
		switch prim {
		case "string":
			return tftypes.String, nil
		case "number":
			return tftypes.Number, nil
		case "bool":
			return tftypes.Bool, nil
		case "dynamic":
			return tftypes.DynamicPseudoType, nil
		}
		return nil, fmt.Errorf("unknown primitive type %q", prim)
	}
	var parts []json.RawMessage
	if err := json.Unmarshal(raw, &parts); err != nil || len(parts) < 2 {
		return nil, fmt.Errorf("type %s: want a string or [kind, ...]", raw)
	}
	var kind string
	if err := json.Unmarshal(parts[0], &kind); err != nil {
		return nil, fmt.Errorf("type %s: kind is not a string", raw)
	}
	switch kind {
	case "list", "set", "map":
		if len(parts) != 2 {
			return nil, fmt.Errorf("type %s: %s takes one element type", raw, kind)
		}
		elem, err := parseType(parts[1])
		if err != nil {
			return nil, err
		}
		switch kind {
		case "list":
			return tftypes.List{ElementType: elem}, nil
		case "set":
			return tftypes.Set{ElementType: elem}, nil
		default:
			return tftypes.Map{ElementType: elem}, nil
		}
	case "object":
		if len(parts) > 3 {
			return nil, fmt.Errorf("type %s: object takes attributes and optional names", raw)
		}
		var attrs map[string]json.RawMessage
		if err := json.Unmarshal(parts[1], &attrs); err != nil {
			return nil, fmt.Errorf("type %s: object attributes: %w", raw, err)
		}
		obj := tftypes.Object{AttributeTypes: map[string]tftypes.Type{}}
		for name, at := range attrs {
			t, err := parseType(at)
			if err != nil {
				return nil, fmt.Errorf("object attribute %s: %w", name, err)
			}
			obj.AttributeTypes[name] = t
		}
		if len(parts) == 3 {
			var optional []string
			if err := json.Unmarshal(parts[2], &optional); err != nil {
				return nil, fmt.Errorf("type %s: optional attribute names: %w", raw, err)
			}
			obj.OptionalAttributes = map[string]struct{}{}
			for _, name := range optional {
				if _, ok := obj.AttributeTypes[name]; !ok {
					return nil, fmt.Errorf("type %s: optional attribute %s is not an attribute", raw, name)
				}
				obj.OptionalAttributes[name] = struct{}{}
			}
		}
		return obj, nil
	case "tuple":
		if len(parts) != 2 {
			return nil, fmt.Errorf("type %s: tuple takes a list of element types", raw)
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(parts[1], &elems); err != nil {
			return nil, fmt.Errorf("type %s: tuple elements: %w", raw, err)
		}
		tup := tftypes.Tuple{}
		for _, e := range elems {
			t, err := parseType(e)
			if err != nil {
				return nil, err
			}
			tup.ElementTypes = append(tup.ElementTypes, t)
		}
		return tup, nil
	}
	return nil, fmt.Errorf("type %s: unknown kind %q", raw, kind)
}
