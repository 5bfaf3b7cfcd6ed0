// Package policy decides per route who may pass: allow and deny rules over
// an identity and the client's address, written in the config file and
// compiled once at start.
//
// A policy is a mapping with allow (required) and deny (optional):
//
//	policy:
//	  allow:
//	    or:
//	      - domain: {is: example.com}
//	      - groups: {any-of: [admins, sre]}
//	  deny:
//	    email: {in: [mallory@example.com]}
//
// allow is a rule or the word any-authenticated. A rule is a mapping with
// exactly one key: and, or (a non-empty list of rules), not (one rule), or
// a criterion: user, email, domain, sub (is: or in:), groups (has:,
// any-of:, all-of:) and client (is: or in:, addresses or CIDR prefixes).
// Emails and domains compare without regard to case; users, subjects and
// groups exactly. A request passes when no deny rule matches and the allow
// rule does: deny wins.
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/kmsgate/kmsgate/gateway/identity"
)

// AnyAuthenticated is the allow value that lets every identity the route's
// source accepts through.
const AnyAuthenticated = "any-authenticated"

// Spec is a policy as written: the YAML of a config file's policy key,
// compiled by Compile.
type Spec struct{ node *yaml.Node }

// UnmarshalYAML keeps the policy's YAML for Compile, which reports
// mistakes with the route they belong to.
func (s *Spec) UnmarshalYAML(n *yaml.Node) error {
	s.node = n
	return nil
}

// ParseSpec reads a policy written in YAML, for callers that build a
// configuration in code.
func ParseSpec(text string) (Spec, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		return Spec{}, fmt.Errorf("policy: %w", err)
	}
	if len(doc.Content) == 0 {
		return Spec{}, errors.New("policy: empty")
	}
	return Spec{node: doc.Content[0]}, nil
}

// MustParseSpec is ParseSpec for policies fixed in code; it panics on a
// mistake.
func MustParseSpec(text string) Spec {
	s, err := ParseSpec(text)
	if err != nil {
		panic(err)
	}
	return s
}

// IsZero reports whether no policy was written.
func (s Spec) IsZero() bool { return s.node == nil }

// Input is what a policy judges: who the request is for, and the address
// of the client (the peer, or what a trusted proxy in front reported).
type Input struct {
	Identity *identity.Identity
	Client   netip.Addr
}

// Decision is the outcome of a policy.
type Decision uint8

const (
	// Allow: no deny rule matched and the allow rule did.
	Allow Decision = iota
	// Deny: a deny rule matched.
	Deny
	// NotAllowed: the allow rule did not match.
	NotAllowed
)

// String names a decision for metrics and logs.
func (d Decision) String() string {
	switch d {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "not-allowed"
}

// Policy is a compiled policy; it is safe for concurrent use.
type Policy struct {
	allow, deny *rule // deny may be nil; allow nil means any-authenticated
	usesClient  bool
}

// Decide judges one request.
func (p *Policy) Decide(in *Input) Decision {
	if p.deny != nil && p.deny.match(in) {
		return Deny
	}
	if p.allow != nil && !p.allow.match(in) {
		return NotAllowed
	}
	return Allow
}

// UsesClient reports whether a rule looks at the client's address, so a
// caller can skip working it out otherwise.
func (p *Policy) UsesClient() bool { return p.usesClient }

// Compile checks a policy and builds it. Each mistake is reported with
// where it is (allow.or[2].emial) and its line.
func Compile(s Spec) (*Policy, error) {
	if s.node == nil {
		return nil, errors.New("no policy")
	}
	n := s.node
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping with allow (and deny), such as allow: any-authenticated", n.Line)
	}
	c := &compiler{}
	p := &Policy{}
	var hasAllow bool
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "allow":
			hasAllow = true
			if v.Kind == yaml.ScalarNode {
				if v.Value != AnyAuthenticated {
					return nil, fmt.Errorf("allow (line %d): %q: want %s or a rule", v.Line, v.Value, AnyAuthenticated)
				}
				continue
			}
			r, err := c.rule("allow", v)
			if err != nil {
				return nil, err
			}
			p.allow = r
		case "deny":
			r, err := c.rule("deny", v)
			if err != nil {
				return nil, err
			}
			p.deny = r
		default:
			return nil, fmt.Errorf("line %d: unknown key %q: a policy has allow and deny", k.Line, k.Value)
		}
	}
	if !hasAllow {
		return nil, fmt.Errorf("line %d: no allow: a policy without one refuses every request (write allow: %s to let any identity through but the denied ones)", n.Line, AnyAuthenticated)
	}
	p.usesClient = c.usesClient
	return p, nil
}

// kind is what a compiled rule tests.
type kind uint8

const (
	kindAnd kind = iota
	kindOr
	kindNot
	kindUser
	kindSub
	kindEmail  // values compared without regard to case
	kindDomain // the email's domain, without regard to case
	kindGroupsAny
	kindGroupsAll
	kindClient
)

// rule is one compiled rule: a combination of kids, or a criterion with
// its values. One concrete type evaluated by one switch keeps the input on
// the caller's stack.
type rule struct {
	kind     kind
	kids     []*rule
	values   []string
	prefixes []netip.Prefix
}

func (r *rule) match(in *Input) bool {
	id := in.Identity
	switch r.kind {
	case kindAnd:
		for _, k := range r.kids {
			if !k.match(in) {
				return false
			}
		}
		return true
	case kindOr:
		for _, k := range r.kids {
			if k.match(in) {
				return true
			}
		}
		return false
	case kindNot:
		return !r.kids[0].match(in)
	case kindUser:
		return id.User != "" && slices.Contains(r.values, id.User)
	case kindSub:
		return id.Subject != "" && slices.Contains(r.values, id.Subject)
	case kindEmail:
		return id.Email != "" && anyFold(r.values, id.Email)
	case kindDomain:
		at := strings.LastIndexByte(id.Email, '@')
		return at >= 0 && anyFold(r.values, id.Email[at+1:])
	case kindGroupsAny:
		for _, want := range r.values {
			if slices.Contains(id.Groups, want) {
				return true
			}
		}
		return false
	case kindGroupsAll:
		for _, want := range r.values {
			if !slices.Contains(id.Groups, want) {
				return false
			}
		}
		return true
	case kindClient:
		a := in.Client.Unmap()
		if !a.IsValid() {
			return false
		}
		for _, p := range r.prefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	return false
}

// anyFold reports whether v is one of values, without regard to case.
func anyFold(values []string, v string) bool {
	for _, want := range values {
		if strings.EqualFold(v, want) {
			return true
		}
	}
	return false
}

// compiler builds rules and notes what they need.
type compiler struct{ usesClient bool }

// criteria are the rule keys with the operators each takes.
var criteria = map[string][]string{
	"user": {"is", "in"}, "email": {"is", "in"}, "domain": {"is", "in"}, "sub": {"is", "in"},
	"groups": {"has", "any-of", "all-of"}, "client": {"is", "in"},
}

func ruleKeys() string {
	keys := []string{"and", "or", "not"}
	for k := range criteria {
		keys = append(keys, k)
	}
	slices.Sort(keys[3:])
	return strings.Join(keys, ", ")
}

func (c *compiler) rule(at string, n *yaml.Node) (*rule, error) {
	if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
		what := "a list"
		if n.Kind == yaml.MappingNode {
			what = fmt.Sprintf("a mapping with %d keys", len(n.Content)/2)
		} else if n.Kind == yaml.ScalarNode {
			what = fmt.Sprintf("%q", n.Value)
		}
		return nil, fmt.Errorf("%s (line %d): want one rule, a mapping with one key (%s), got %s; combine several with and: or or:", at, n.Line, ruleKeys(), what)
	}
	k, v := n.Content[0], n.Content[1]
	at += "." + k.Value
	switch k.Value {
	case "and", "or":
		if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
			return nil, fmt.Errorf("%s (line %d): want a non-empty list of rules", at, v.Line)
		}
		rs := make([]*rule, len(v.Content))
		for i, e := range v.Content {
			r, err := c.rule(fmt.Sprintf("%s[%d]", at, i+1), e)
			if err != nil {
				return nil, err
			}
			rs[i] = r
		}
		if k.Value == "and" {
			return &rule{kind: kindAnd, kids: rs}, nil
		}
		return &rule{kind: kindOr, kids: rs}, nil
	case "not":
		r, err := c.rule(at, v)
		if err != nil {
			return nil, err
		}
		return &rule{kind: kindNot, kids: []*rule{r}}, nil
	}
	ops, ok := criteria[k.Value]
	if !ok {
		return nil, fmt.Errorf("%s (line %d): unknown rule %q; want one of %s", at, k.Line, k.Value, ruleKeys())
	}
	if v.Kind != yaml.MappingNode || len(v.Content) != 2 || !slices.Contains(ops, v.Content[0].Value) {
		return nil, fmt.Errorf("%s (line %d): want a mapping with one of %s, such as %s: {%s: …}", at, v.Line, strings.Join(ops, ", "), k.Value, ops[0])
	}
	op, arg := v.Content[0].Value, v.Content[1]
	at += "." + op
	values, err := operands(at, op, arg)
	if err != nil {
		return nil, err
	}
	switch k.Value {
	case "user":
		return &rule{kind: kindUser, values: values}, nil
	case "sub":
		return &rule{kind: kindSub, values: values}, nil
	case "email":
		for _, e := range values {
			if strings.Count(e, "@") != 1 || strings.HasPrefix(e, "@") || strings.HasSuffix(e, "@") {
				return nil, fmt.Errorf("%s (line %d): %q is not an email address", at, arg.Line, e)
			}
		}
		return &rule{kind: kindEmail, values: values}, nil
	case "domain":
		for _, d := range values {
			if strings.ContainsAny(d, "@/ ") || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") {
				return nil, fmt.Errorf("%s (line %d): %q is not a domain name (write example.com, without @)", at, arg.Line, d)
			}
		}
		return &rule{kind: kindDomain, values: values}, nil
	case "groups":
		if op == "all-of" {
			return &rule{kind: kindGroupsAll, values: values}, nil
		}
		return &rule{kind: kindGroupsAny, values: values}, nil
	case "client":
		c.usesClient = true
		prefixes := make([]netip.Prefix, len(values))
		for i, s := range values {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return nil, fmt.Errorf("%s (line %d): %q is not an IP address or CIDR prefix", at, arg.Line, s)
				}
				p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			}
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			if p != p.Masked() {
				return nil, fmt.Errorf("%s (line %d): %q has bits set past its prefix length (did you mean %s?)", at, arg.Line, s, p.Masked())
			}
			prefixes[i] = p
		}
		return &rule{kind: kindClient, prefixes: prefixes}, nil
	}
	return nil, fmt.Errorf("%s (line %d): unknown rule %q", at, k.Line, k.Value)
}

// operands reads an operator's value: one text for is and has, a
// non-empty list of texts for in, any-of and all-of.
func operands(at, op string, n *yaml.Node) ([]string, error) {
	var values []string
	switch op {
	case "is", "has":
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" || n.Value == "" {
			return nil, fmt.Errorf("%s (line %d): want one non-empty value", at, n.Line)
		}
		values = []string{n.Value}
	default:
		if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
			return nil, fmt.Errorf("%s (line %d): want a non-empty list of values", at, n.Line)
		}
		for _, e := range n.Content {
			if e.Kind != yaml.ScalarNode || e.Tag == "!!null" || e.Value == "" {
				return nil, fmt.Errorf("%s (line %d): want non-empty values", at, e.Line)
			}
			values = append(values, e.Value)
		}
	}
	return values, nil
}
