package header

import "testing"

func TestSameName(t *testing.T) {
	for _, c := range []struct {
		name string
		want bool
	}{
		{"X-Kmsgate-Jwt-Assertion", true},
		{"x-kmsgate-jwt-assertion", true},
		{"X_KMSGATE_JWT_ASSERTION", true},
		{"X.Kmsgate.Jwt.Assertion", true},
		{"x-kmsgate_jwt.assertion", true},
		{"X-Kmsgate-Jwt-Assertio", false},
		{"X-Kmsgate-Jwt-Assertionx", false},
		{"X Kmsgate-Jwt-Assertion", false},
	} {
		if got := SameName(c.name, "X-Kmsgate-Jwt-Assertion"); got != c.want {
			t.Errorf("SameName(%q) = %v, want %v", c.name, got, c.want)
		}
		if got := SameName([]byte(c.name), "X-Kmsgate-Jwt-Assertion"); got != c.want {
			t.Errorf("SameName([]byte %q) = %v, want %v", c.name, got, c.want)
		}
	}
	if !Exact("x-forwarded-user", "X-Forwarded-User") || Exact("X_Forwarded_User", "X-Forwarded-User") {
		t.Error("Exact folds more than letter case")
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"X-Kmsgate-Jwt-Assertion": true, "X.Dots.Are.Tokens": true, "a_b": true, "!#$%&'*+-.^_`|~09azAZ": true,
		"": false, "Transfer Encoding": false, "X:Y": false, "X\tY": false, "X\x00": false, "X(Y)": false,
		"X\"Y": false, "X/Y": false, "é": false, "X\r": false,
	} {
		if got := ValidName(name); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, got, want)
		}
	}
	for v, want := range map[string]bool{"a b\tc": true, "": true, "a\rb": false, "a\nb": false, "a\x00": false, "\x7f": false} {
		if got := ValidValue(v); got != want {
			t.Errorf("ValidValue(%q) = %v, want %v", v, got, want)
		}
	}
}
