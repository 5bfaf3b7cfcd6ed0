package pkcs11_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/pkcs11"
)

const mod = "module-path=/usr/lib/softhsm/libsofthsm2.so"

func TestParseURI(t *testing.T) {
	p, err := pkcs11.ParseURI("pkcs11:token=My%20Token;serial=1234;slot-id=7;object=jwt;id=0a01;type=private?"+mod+"&pin-source=file:/run/secrets/pin&x-max-sessions=4", false)
	if err != nil {
		t.Fatal(err)
	}
	if p.Token != "My Token" || p.Serial != "1234" || !p.HasSlotID || p.SlotID != 7 || p.Object != "jwt" || p.LabelPrefix ||
		!bytes.Equal(p.ID, []byte{0x0a, 0x01}) || p.ModulePath != "/usr/lib/softhsm/libsofthsm2.so" || p.PINFile != "/run/secrets/pin" ||
		p.HasPINValue || p.MaxSessions != 4 {
		t.Fatalf("parsed %+v", p)
	}
	if got, want := p.String(), "pkcs11:token=My%20Token;serial=1234;slot-id=7;object=jwt;id=0a01"; got != want {
		t.Fatalf("String() = %s, want %s", got, want)
	}

	for _, c := range []struct {
		uri    string
		check  func(*pkcs11.URI) bool
		dev    bool
		reason string
	}{
		{"pkcs11:object=jwt-*?" + mod + "&pin-source=/run/pin", func(p *pkcs11.URI) bool {
			return p.Object == "jwt-" && p.LabelPrefix && p.PINFile == "/run/pin" && p.MaxSessions == pkcs11.DefaultMaxSessions
		}, false, "a trailing * is a prefix; a bare path is a pin-source"},
		{"pkcs11:object=a%2A?" + mod + "&pin-source=file:///run/pin", func(p *pkcs11.URI) bool {
			return p.Object == "a*" && !p.LabelPrefix && p.PINFile == "/run/pin"
		}, false, "%2A is a literal star; file:///path"},
		{"pkcs11:id=%01%FF?" + mod + "&pin-source=file://localhost/run/pin", func(p *pkcs11.URI) bool {
			return !p.HasObject && bytes.Equal(p.ID, []byte{1, 0xff}) && p.PINFile == "/run/pin"
		}, false, "RFC 7512 percent-encoded id"},
		{"pkcs11:object=k?" + mod + "&pin-value=12+34", func(p *pkcs11.URI) bool {
			return p.HasPINValue && p.PINValue == "12+34"
		}, true, "pin-value in tests; + is a plus"},
	} {
		p, err := pkcs11.ParseURI(c.uri, c.dev)
		if err != nil || !c.check(p) {
			t.Errorf("%s (%s): %+v %v", c.uri, c.reason, p, err)
		}
	}
}

func TestParseURIErrors(t *testing.T) {
	for _, c := range []struct{ uri, want string }{
		{"pkcs11://token=T;object=k?" + mod, "no // after pkcs11:"},
		{"pkcs11:?" + mod, "no path attributes"},
		{"pkcs11:token=T?" + mod + "&pin-source=/p", "name the keys with object=LABEL"},
		{"pkcs11:object=k;object=j?" + mod + "&pin-source=/p", `"object" is given twice`},
		{"pkcs11:object=k;label=j?" + mod + "&pin-source=/p", `unknown path attribute "label"`},
		{"pkcs11:object=k;slot-description=x?" + mod + "&pin-source=/p", `"slot-description" is not supported`},
		{"pkcs11:object=k;id=xyz?" + mod + "&pin-source=/p", `id "xyz": want the CKA_ID in hex`},
		{"pkcs11:object=k;id=?" + mod + "&pin-source=/p", "id is empty"},
		{"pkcs11:object=k;slot-id=a?" + mod + "&pin-source=/p", `slot-id "a" is not a decimal number`},
		{"pkcs11:object=k;type=public?" + mod + "&pin-source=/p", "type=public"},
		{"pkcs11:object=k;token?" + mod, `"token" is not NAME=VALUE`},
		{"pkcs11:object=k?pin-source=/p", "no module-path"},
		{"pkcs11:object=k?module-path=libsofthsm2.so&pin-source=/p", "is not an absolute path"},
		{"pkcs11:object=k?module-name=softhsm2&pin-source=/p", `"module-name" is not supported here: give the library's absolute path`},
		{"pkcs11:object=k?" + mod, "no PIN: add pin-source=file:"},
		{"pkcs11:object=k?" + mod + "&pin-value=1234", "accepted only by tests and `serve --dev`"},
		{"pkcs11:object=k?" + mod + "&pin-value=1234&pin-source=/p", "both pin-source and pin-value"},
		{"pkcs11:object=k?" + mod + "&pin-source=file:pin", "is not an absolute file path"},
		{"pkcs11:object=k?" + mod + "&pin-source=file://host/pin", `names host "host"`},
		{"pkcs11:object=k?" + mod + "&pin-source=env:PIN", "only files are supported"},
		{"pkcs11:object=k?" + mod + "&pin-source=/p&x-max-sessions=0", "x-max-sessions \"0\": want a number from 1 to 1024"},
		{"pkcs11:object=k?" + mod + "&pin-source=/p&pin-source=/q", `"pin-source" is given twice`},
		{"pkcs11:object=k?" + mod + "&pin-source=/p&foo=1", `unknown query attribute "foo"`},
		{"pkcs11:object=k?" + mod + "&pin-source=/p#frag", "fragment"},
		{"pkcs11:object=%zz?" + mod, "invalid URL escape"},
	} {
		_, err := pkcs11.ParseURI(c.uri, false)
		if !errors.Is(err, backends.ErrInvalidURI) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalidURI with %q", c.uri, err, c.want)
		}
	}
	// A PIN in the URI never reaches an error message.
	_, err := pkcs11.ParseURI("pkcs11:object=k?"+mod+"&pin-value=s3cret-pin", false)
	if err == nil || strings.Contains(err.Error(), "s3cret-pin") {
		t.Fatalf("pin-value error: %v", err)
	}
}

func TestVersionID(t *testing.T) {
	for _, c := range []struct {
		label string
		id    []byte
		want  string
	}{
		{"jwt", []byte{1}, "object=jwt;id=01"},
		{"jwt", nil, "object=jwt"},
		{"a b;c*", []byte{0xab, 0}, "object=a%20b%3Bc%2A;id=ab00"},
	} {
		if got := pkcs11.VersionID(c.label, c.id); got != c.want {
			t.Errorf("VersionID(%q, %x) = %s, want %s", c.label, c.id, got, c.want)
		}
	}
}
