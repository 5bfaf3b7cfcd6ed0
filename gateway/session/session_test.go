package session

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"
)

func key(n byte) []byte { return bytes.Repeat([]byte{n}, KeySize) }

func TestSealOpen(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s, _ := NewSealer(key(1))
	s.SetClock(func() time.Time { return now })
	sealed := s.Seal("_kmsgate", []byte("hello"), now.Add(time.Minute))
	if v, err := s.Open("_kmsgate", sealed); err != nil || string(v) != "hello" {
		t.Fatalf("open: %q %v", v, err)
	}
	if s.Seal("_kmsgate", []byte("hello"), now.Add(time.Minute)) == sealed {
		t.Error("two seals of one value are equal (no fresh nonce)")
	}
	if _, err := s.Open("_other", sealed); err != ErrInvalid {
		t.Errorf("opened for another cookie name: %v", err)
	}
	for i := range len(sealed) {
		b := []byte(sealed)
		b[i] ^= 0x01
		if _, err := s.Open("_kmsgate", string(b)); err == nil {
			t.Fatalf("tampered at %d: opened", i)
		}
	}
	if _, err := s.Open("_kmsgate", sealed[:len(sealed)-4]); err == nil {
		t.Error("a cut value opened")
	}
	if _, err := s.Open("_kmsgate", ""); err == nil {
		t.Error("an empty value opened")
	}
	// Expiry is sealed with the value: it holds until the second it names.
	now = now.Add(59 * time.Second)
	if _, err := s.Open("_kmsgate", sealed); err != nil {
		t.Errorf("before expiry: %v", err)
	}
	now = now.Add(time.Second)
	if _, err := s.Open("_kmsgate", sealed); err != ErrInvalid {
		t.Errorf("at expiry: %v", err)
	}
}

func TestRotation(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	old, _ := NewSealer(key(1))
	sealed := old.Seal("c", []byte("v"), exp)
	both, _ := NewSealer(key(2), key(1))
	if v, err := both.Open("c", sealed); err != nil || string(v) != "v" {
		t.Fatalf("old key kept: %v", err)
	}
	if _, err := old.Open("c", both.Seal("c", []byte("v"), exp)); err == nil {
		t.Error("the new first key did not seal")
	}
	onlyNew, _ := NewSealer(key(2))
	if _, err := onlyNew.Open("c", sealed); err == nil {
		t.Error("opened after the old key was dropped")
	}
}

func TestParseKeys(t *testing.T) {
	good := "# keys\n" + "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n\n" + "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\n"
	if _, err := ParseKeys([]byte(good), "test"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "# only a comment\n", "not base64!\n", "AQID\n"} {
		_, err := ParseKeys([]byte(bad), "env://X")
		if err == nil || !strings.Contains(err.Error(), "env://X") || strings.Contains(err.Error(), "AQID") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestCookiesChunks(t *testing.T) {
	c := Cookies{Name: "_s", Secure: true}
	long := strings.Repeat("x", maxCookie*2+10)
	set, err := c.Write(long, time.Now().Add(time.Hour))
	if err != nil || len(set) != MaxChunks {
		t.Fatalf("%d cookies, %v", len(set), err)
	}
	var header []string
	for _, v := range set {
		ck, err := http.ParseSetCookie(v)
		if err != nil || !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" {
			t.Fatalf("cookie %q: %v", v, err)
		}
		if len(v) > 4096 {
			t.Errorf("a cookie of %d bytes", len(v))
		}
		header = append(header, ck.Name+"="+ck.Value)
	}
	if got := c.Read([]string{strings.Join(header, "; ")}); got != long {
		t.Errorf("read back %d bytes, want %d", len(got), len(long))
	}
	if _, err := c.Write(strings.Repeat("x", maxCookie*MaxChunks+1), time.Now()); err == nil {
		t.Error("a value longer than the chunks was written")
	}
	short, _ := c.Write("abc", time.Now().Add(time.Hour))
	if !strings.Contains(short[1], "Max-Age=0") || !strings.Contains(short[2], "Max-Age=0") {
		t.Errorf("a short value does not clear the old chunks: %q", short)
	}
	if !c.Owns("_s") || !c.Owns("_s_2") || c.Owns("_s_3") || c.Owns("_sx") || c.Owns("_s_") {
		t.Error("Owns")
	}
}
