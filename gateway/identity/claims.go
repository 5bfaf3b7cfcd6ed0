package identity

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// ClaimNames are the claims of an assertion that a route may also send as
// plain headers (claim-headers).
var ClaimNames = []string{"sub", "user", "email", "groups", "name"}

// Claim returns the value of one of ClaimNames for id, as a header carries
// it: groups joined with commas.
func (id *Identity) Claim(name string) string {
	switch name {
	case "sub":
		return id.Subject
	case "user":
		return id.User
	case "email":
		return id.Email
	case "groups":
		return strings.Join(id.Groups, ",")
	case "name":
		return id.Name
	}
	return ""
}

// GroupsFilter keeps the groups a route cares about (config groups-filter):
// a list of group names, or one regular expression that a whole group name
// must match. The zero value keeps every group.
type GroupsFilter struct {
	Names   []string
	Pattern string
}

// UnmarshalYAML reads a list of names or a pattern.
func (f *GroupsFilter) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.SequenceNode:
		return n.Decode(&f.Names)
	case yaml.ScalarNode:
		f.Pattern = n.Value
		return nil
	}
	return fmt.Errorf("line %d: groups-filter: want a list of group names or a regular expression", n.Line)
}

// Compile checks the filter and returns it as a function on an identity's
// groups, or nil when it keeps every group.
func (f GroupsFilter) Compile() (func([]string) []string, error) {
	switch {
	case len(f.Names) > 0 && f.Pattern != "":
		return nil, fmt.Errorf("groups-filter: a list of names or a pattern, not both")
	case f.Pattern != "":
		re, err := regexp.Compile(`^(?:` + f.Pattern + `)$`)
		if err != nil {
			return nil, fmt.Errorf("groups-filter %q: %w", f.Pattern, err)
		}
		return func(groups []string) []string { return keep(groups, re.MatchString) }, nil
	case f.Names != nil:
		if len(f.Names) == 0 || slices.Contains(f.Names, "") {
			return nil, fmt.Errorf("groups-filter: want non-empty group names")
		}
		names := slices.Clone(f.Names)
		return func(groups []string) []string {
			return keep(groups, func(g string) bool { return slices.Contains(names, g) })
		}, nil
	}
	return nil, nil
}

// keep returns the groups for which ok holds, in their order; groups
// itself when it keeps them all.
func keep(groups []string, ok func(string) bool) []string {
	for i, g := range groups {
		if ok(g) {
			continue
		}
		out := slices.Clone(groups[:i])
		for _, g := range groups[i+1:] {
			if ok(g) {
				out = append(out, g)
			}
		}
		return out
	}
	return groups
}
