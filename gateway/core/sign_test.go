package core

import (
	"strings"
	"testing"
)

func TestDecodeSignRequestStrict(t *testing.T) {
	for body, want := range map[string]string{
		`{"claims":{"sub":"a","aud":"b"}}`:                      "",
		`{"claims":{"sub":"a","aud":"b"},"ttl":"5m"}`:           "",
		`{"claims":{"sub":"a","aud":"b","x":{"y":1,"z":[{}]}}}`: "",
		`{"claims":{"sub":"a","sub":"b"}}`:                      `key "sub" appears twice`,
		`{"claims":{"sub":"a"},"claims":{"sub":"b"}}`:           `key "claims" appears twice`,
		`{"claims":{"x":{"y":1,"y":2}}}`:                        `key "y" appears twice`,
		`{"claims":{"x":[{"y":1},{"y":1,"y":2}]}}`:              `key "y" appears twice`,
		`{"claims":{"x":[{"y":1},{"y":2}],"y":3}}`:              "",
		`{"claims":{"a":"k","k":1}}`:                            "",
		`{"Claims":{"sub":"a"}}`:                                `unknown member "Claims"`,
		`{"claims":{"sub":"a"},"extra":1}`:                      `unknown member "extra"`,
		`{"claims":{"sub":"a"}} {}`:                             "data after",
		`{"claims":[1]}`:                                        "claims must be a JSON object",
		`null`:                                                  "body must be",
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
