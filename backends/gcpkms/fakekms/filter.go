package fakekms

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"cloud.google.com/go/kms/apiv1/kmspb"
)

// predicate reports whether a version matches a filter.
type predicate func(*kmspb.CryptoKeyVersion) bool

// parseFilter compiles the subset of the Cloud KMS list filter language the
// fake understands: comparisons field=value, field!=value and field:value
// (case-insensitive containment) on name, state, algorithm and
// protection_level; NOT and - for negation; AND (or a space) and OR, with OR
// binding tighter as in Cloud KMS; and parentheses. Anything else is an
// error, so a filter the fake would misread fails the call instead of
// matching the wrong versions.
func parseFilter(src string) (predicate, error) {
	toks, err := tokenize(src)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return func(*kmspb.CryptoKeyVersion) bool { return true }, nil
	}
	p := &parser{toks: toks}
	pred, err := p.conj()
	if err != nil {
		return nil, err
	}
	if p.pos != len(p.toks) {
		return nil, fmt.Errorf("unexpected %q", p.toks[p.pos].text)
	}
	return pred, nil
}

type token struct {
	text   string
	quoted bool
}

func tokenize(src string) ([]token, error) {
	var toks []token
	r := []rune(src)
	for i := 0; i < len(r); {
		c := r[i]
		switch {
		case unicode.IsSpace(c):
			i++
		case c == '(' || c == ')' || c == '=' || c == ':':
			toks = append(toks, token{text: string(c)})
			i++
		case c == '!' && i+1 < len(r) && r[i+1] == '=':
			toks = append(toks, token{text: "!="})
			i += 2
		case c == '<' || c == '>' || c == '!':
			return nil, fmt.Errorf("operator %q is not supported by the fake", string(c))
		case c == '-' && (len(toks) == 0 || !isOperand(toks[len(toks)-1])):
			toks = append(toks, token{text: "-"})
			i++
		case c == '"':
			j := i + 1
			for j < len(r) && r[j] != '"' {
				j++
			}
			if j == len(r) {
				return nil, errors.New("unterminated quoted string")
			}
			toks = append(toks, token{text: string(r[i+1 : j]), quoted: true})
			i = j + 1
		default:
			j := i
			for j < len(r) && !unicode.IsSpace(r[j]) && !strings.ContainsRune("()=:!<>\"", r[j]) {
				j++
			}
			toks = append(toks, token{text: string(r[i:j])})
			i = j
		}
	}
	return toks, nil
}

// isOperand reports whether t ends an operand, so that a following '-' is
// part of a word rather than a negation.
func isOperand(t token) bool {
	return t.quoted || t.text == ")" || (t.text != "=" && t.text != "!=" && t.text != ":" && t.text != "(" && t.text != "-" && !isKeyword(t))
}

func isKeyword(t token) bool {
	return !t.quoted && (t.text == "AND" || t.text == "OR" || t.text == "NOT")
}

type parser struct {
	toks []token
	pos  int
}

func (p *parser) peek() (token, bool) {
	if p.pos >= len(p.toks) {
		return token{}, false
	}
	return p.toks[p.pos], true
}

// conj parses disjunctions joined by AND or by juxtaposition.
func (p *parser) conj() (predicate, error) {
	left, err := p.disj()
	if err != nil {
		return nil, err
	}
	for {
		t, ok := p.peek()
		if !ok || (!t.quoted && t.text == ")") {
			return left, nil
		}
		if !t.quoted && t.text == "AND" {
			p.pos++
		}
		right, err := p.disj()
		if err != nil {
			return nil, err
		}
		l := left
		left = func(v *kmspb.CryptoKeyVersion) bool { return l(v) && right(v) }
	}
}

func (p *parser) disj() (predicate, error) {
	left, err := p.unary()
	if err != nil {
		return nil, err
	}
	for {
		t, ok := p.peek()
		if !ok || t.quoted || t.text != "OR" {
			return left, nil
		}
		p.pos++
		right, err := p.unary()
		if err != nil {
			return nil, err
		}
		l := left
		left = func(v *kmspb.CryptoKeyVersion) bool { return l(v) || right(v) }
	}
}

func (p *parser) unary() (predicate, error) {
	t, ok := p.peek()
	if !ok {
		return nil, errors.New("unexpected end of filter")
	}
	if !t.quoted && (t.text == "NOT" || t.text == "-") {
		p.pos++
		inner, err := p.unary()
		if err != nil {
			return nil, err
		}
		return func(v *kmspb.CryptoKeyVersion) bool { return !inner(v) }, nil
	}
	if !t.quoted && t.text == "(" {
		p.pos++
		inner, err := p.conj()
		if err != nil {
			return nil, err
		}
		if t, ok := p.peek(); !ok || t.quoted || t.text != ")" {
			return nil, errors.New("missing )")
		}
		p.pos++
		return inner, nil
	}
	return p.comparison()
}

func (p *parser) comparison() (predicate, error) {
	if p.pos+3 > len(p.toks) {
		return nil, errors.New("incomplete comparison")
	}
	field, op, val := p.toks[p.pos], p.toks[p.pos+1], p.toks[p.pos+2]
	p.pos += 3
	if field.quoted || isKeyword(field) {
		return nil, fmt.Errorf("want a field name, got %q", field.text)
	}
	if op.quoted || (op.text != "=" && op.text != "!=" && op.text != ":") {
		return nil, fmt.Errorf("want =, != or : after %s, got %q", field.text, op.text)
	}
	if !val.quoted && (isKeyword(val) || strings.ContainsAny(val.text, "()")) {
		return nil, fmt.Errorf("want a value after %s%s, got %q", field.text, op.text, val.text)
	}
	var get func(*kmspb.CryptoKeyVersion) string
	var enum map[string]int32
	switch field.text {
	case "name":
		get = func(v *kmspb.CryptoKeyVersion) string { return v.GetName() }
	case "state":
		get = func(v *kmspb.CryptoKeyVersion) string { return v.GetState().String() }
		enum = kmspb.CryptoKeyVersion_CryptoKeyVersionState_value
	case "algorithm":
		get = func(v *kmspb.CryptoKeyVersion) string { return v.GetAlgorithm().String() }
		enum = kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm_value
	case "protection_level", "protectionLevel":
		get = func(v *kmspb.CryptoKeyVersion) string { return v.GetProtectionLevel().String() }
		enum = kmspb.ProtectionLevel_value
	default:
		return nil, fmt.Errorf("field %q is not supported by the fake", field.text)
	}
	want := val.text
	if enum != nil && op.text != ":" {
		if _, ok := enum[want]; !ok {
			return nil, fmt.Errorf("%q is not a value of %s", want, field.text)
		}
	}
	switch op.text {
	case "=":
		return func(v *kmspb.CryptoKeyVersion) bool { return get(v) == want }, nil
	case "!=":
		return func(v *kmspb.CryptoKeyVersion) bool { return get(v) != want }, nil
	default:
		lw := strings.ToLower(want)
		return func(v *kmspb.CryptoKeyVersion) bool { return strings.Contains(strings.ToLower(get(v)), lw) }, nil
	}
}
