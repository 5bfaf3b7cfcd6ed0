package core

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestDecodeSignRequestStrict(t *testing.T) {
	for body, want := range map[string]string{
		`{"claims":{"sub":"a","aud":"b"}}`:                      "",
		`{"claims":{"sub":"a","aud":"b"},"ttl":"5m"}`:           "",
		`{"claims":{"sub":"a","aud":"b","x":{"y":1,"z":[{}]}}}`: "",
		`{"claims":{"sub":"a","sub":"b"}}`:                      `duplicate object member name "sub"`,
		`{"claims":{"sub":"a"},"claims":{"sub":"b"}}`:           `duplicate object member name "claims"`,
		`{"claims":{"x":{"y":1,"y":2}}}`:                        `duplicate object member name "y"`,
		`{"claims":{"x":[{"y":1},{"y":1,"y":2}]}}`:              `duplicate object member name "y"`,
		`{"claims":{"x":[{"y":1},{"y":2}],"y":3}}`:              "",
		`{"claims":{"a":"k","k":1}}`:                            "",
		`{"Claims":{"sub":"a"}}`:                                `unknown object member name "Claims"`,
		`{"claims":{"sub":"a"},"extra":1}`:                      `unknown object member name "extra"`,
		`{"claims":{"sub":"a"}} {}`:                             "after top-level value",
		"{\"claims\":{\"sub\":\"\xff\"}}":                       "invalid UTF-8",
		`{"claims":[1]}`:                                        "body must be",
		`null`:                                                  "claims must be a JSON object",
		`{"claims":`:                                            "body must be",
	} {
		_, err := decodeSignRequest([]byte(body))
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", body, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v, want an error with %q", body, err, want)
		}
	}
}

func BenchmarkDecodeSignRequest(b *testing.B) {
	body := []byte(`{"claims":{"sub":"alice","aud":"bench","scope":"read write"},"ttl":"5m"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeSignRequest(body); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDecodeSignRequestValues(t *testing.T) {
	req, err := decodeSignRequest([]byte(`{"claims":{"s":"a\u00e9","n":12345678901234567890,"f":1.5,"t":true,"z":null,"o":{"k":[1,"x"]}},"ttl":300}`))
	if err != nil {
		t.Fatal(err)
	}
	c := req.Claims
	if c["s"] != "aé" || c["n"] != json.Number("12345678901234567890") || c["f"] != json.Number("1.5") || c["t"] != true || c["z"] != nil {
		t.Errorf("claims %#v", c)
	}
	if o, ok := c["o"].(map[string]any); !ok || fmt.Sprint(o["k"]) != "[1 x]" {
		t.Errorf("nested %#v", c["o"])
	}
	if string(req.TTL) != "300" {
		t.Errorf("ttl %q", req.TTL)
	}
}
