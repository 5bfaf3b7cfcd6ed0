package jwks

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/kmsgate/kmsgate/backends"
)

// The example JWKS of seeds/000: its x and y must give exactly its kid.
func TestPomeriumHexKID(t *testing.T) {
	x, _ := base64.RawURLEncoding.DecodeString("QCN7adG2AmIK3UdHJvVJkldsUc6XeBRz83Z4rXX8Va4")
	y, _ := base64.RawURLEncoding.DecodeString("PI95b-ary66nrvA55TpaiWADq8b3O1CYIbvjqIHpXCY")
	pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
	got, err := KID(pub, KIDHex)
	if err != nil {
		t.Fatal(err)
	}
	if want := "ccc5bc9d835ff3c8f7075ed4a7510159cf440fd7bf7b517b5caeb1fa419ee6a1"; got != want {
		t.Fatalf("hex kid %s, want %s", got, want)
	}
	tp, _ := KID(pub, KIDThumbprint)
	if tp != "zMW8nYNf88j3B17Up1EBWc9ED9e_e1F7XK6x-kGe5qE" {
		t.Fatalf("thumbprint kid %s", tp)
	}
	j := NewJWK(pub, got)
	if j.X != "QCN7adG2AmIK3UdHJvVJkldsUc6XeBRz83Z4rXX8Va4" || j.Y != "PI95b-ary66nrvA55TpaiWADq8b3O1CYIbvjqIHpXCY" || j.Use != "sig" || j.Alg != "ES256" || j.Crv != "P-256" || j.Kty != "EC" {
		t.Fatalf("JWK %+v", j)
	}
}

func TestParseKIDFormat(t *testing.T) {
	if _, err := ParseKIDFormat("sha1"); err == nil || !strings.Contains(err.Error(), `"sha1"`) {
		t.Fatalf("bad format: %v", err)
	}
	if f, _ := ParseKIDFormat(""); f != KIDThumbprint {
		t.Fatal("default is not thumbprint")
	}
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// testKeys gives each version name a fixed public key.
var testKeys = map[string]*ecdsa.PublicKey{}

func pub(name string) *ecdsa.PublicKey {
	if k, ok := testKeys[name]; ok {
		return k
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	testKeys[name] = &k.PublicKey
	return &k.PublicKey
}

func ver(id string, created time.Time, st backends.State) backends.Version {
	return backends.Version{ID: id, PublicKey: pub(id), Created: created, State: st}
}

const on = backends.StateEnabled

func TestOrder(t *testing.T) {
	pre := 2 * time.Hour
	type want map[string]Role // version id to role; absent ids are not published
	cases := []struct {
		name       string
		uris       []URIVersions
		now        time.Time
		want       want
		nextChange time.Time
	}{
		{
			name: "fresh deployment with one new key signs at once",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, on)}}},
			now:  t0.Add(time.Minute),
			want: want{"v1": RoleActive},
		},
		{
			name: "new version inside the prepublish window is pending",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, on), ver("v2", t0.Add(10*time.Hour), on)}}},
			now:  t0.Add(11 * time.Hour),
			want: want{"v1": RoleActive, "v2": RolePending}, nextChange: t0.Add(12 * time.Hour),
		},
		{
			name: "new version exactly at the end of the window signs",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, on), ver("v2", t0.Add(10*time.Hour), on)}}},
			now:  t0.Add(12 * time.Hour),
			want: want{"v1": RoleRetiring, "v2": RoleActive},
		},
		{
			name: "new version past the window signs, old one retires",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("v2", t0.Add(10*time.Hour), on), ver("v1", t0, on)}}},
			now:  t0.Add(13 * time.Hour),
			want: want{"v1": RoleRetiring, "v2": RoleActive},
		},
		{
			name: "two versions, both too new: the oldest signs",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, on), ver("v2", t0.Add(time.Hour), on)}}},
			now:  t0.Add(90 * time.Minute),
			want: want{"v1": RoleActive, "v2": RolePending}, nextChange: t0.Add(3 * time.Hour),
		},
		{
			name: "disabled and destroyed versions are dropped",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{
				ver("v1", t0, backends.StateDestroyed), ver("v2", t0.Add(time.Hour), backends.StateDisabled),
				ver("v3", t0.Add(2*time.Hour), on), {ID: "v4", Created: t0.Add(3 * time.Hour), State: backends.StatePendingGeneration},
				ver("v5", t0.Add(4*time.Hour), backends.StatePendingDeletion)}}},
			now:  t0.Add(24 * time.Hour),
			want: want{"v3": RoleActive},
		},
		{
			name: "disabling the active version moves signing to the newest ripe one",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, on), ver("v2", t0.Add(time.Hour), on), ver("v3", t0.Add(10*time.Hour), backends.StateDisabled)}}},
			now:  t0.Add(20 * time.Hour),
			want: want{"v1": RoleRetiring, "v2": RoleActive},
		},
		{
			name: "verify-only versions are published but never sign",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, backends.StateVerifyOnly), ver("v2", t0.Add(time.Hour), on)}}},
			now:  t0.Add(time.Hour + time.Minute),
			want: want{"v1": RoleRetiring, "v2": RoleActive},
		},
		{
			name: "nothing can sign",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, backends.StateVerifyOnly), ver("v2", t0, backends.StateDisabled)}}},
			now:  t0.Add(time.Hour),
			want: want{"v1": RolePublished},
		},
		{
			name: "equal creation times order by version id, numerically",
			uris: []URIVersions{{URI: "k", Versions: []backends.Version{ver("keys/10", t0, on), ver("keys/9", t0, on), ver("keys/2", t0, on)}}},
			now:  t0.Add(3 * time.Hour),
			want: want{"keys/2": RoleRetiring, "keys/9": RoleRetiring, "keys/10": RoleActive},
		},
		{
			name: "several URIs: only the first signs, the others are published",
			uris: []URIVersions{
				{URI: "new", Versions: []backends.Version{ver("n1", t0.Add(5*time.Hour), on)}},
				{URI: "old", Versions: []backends.Version{ver("o1", t0, on), ver("o2", t0.Add(time.Hour), on), ver("o3", t0, backends.StateDisabled)}},
				{URI: "pem", Ordering: backends.FirstSigns, Versions: []backends.Version{ver("p1", time.Time{}, on)}},
			},
			now:  t0.Add(6 * time.Hour),
			want: want{"n1": RoleActive, "o1": RolePublished, "o2": RolePublished, "p1": RolePublished},
		},
		{
			name: "PEM: the first key signs, every key is published",
			uris: []URIVersions{{URI: "pem", Ordering: backends.FirstSigns, Versions: []backends.Version{ver("pB", time.Time{}, on), ver("pA", time.Time{}, on)}}},
			now:  t0,
			want: want{"pB": RoleActive, "pA": RolePublished},
		},
		{
			name: "the same key under two URIs is published once",
			uris: []URIVersions{
				{URI: "a", Versions: []backends.Version{ver("shared", t0, on)}},
				{URI: "b", Versions: []backends.Version{{ID: "other-id", PublicKey: pub("shared"), Created: t0, State: on}}},
			},
			now:  t0.Add(3 * time.Hour),
			want: want{"shared": RoleActive},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan, err := Order(c.uris, c.now, pre, KIDThumbprint)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]Role{}
			for _, k := range plan.Keys {
				got[k.Version.ID] = k.Role
			}
			if len(got) != len(c.want) {
				t.Fatalf("published %v, want %v", got, c.want)
			}
			actives := 0
			for id, r := range c.want {
				if got[id] != r {
					t.Errorf("%s: role %q, want %q (all: %v)", id, got[id], r, got)
				}
				if r == RoleActive {
					actives++
				}
			}
			if k, ok := plan.ActiveKey(); ok != (actives == 1) || (ok && k.Role != RoleActive) {
				t.Errorf("ActiveKey = %v, %v", k.Version.ID, ok)
			}
			if !plan.NextChange.Equal(c.nextChange) {
				t.Errorf("NextChange %s, want %s", plan.NextChange, c.nextChange)
			}
			// The result is a pure function of the input: the same call
			// gives the same document.
			again, _ := Order(c.uris, c.now, pre, KIDThumbprint)
			d1, _ := NewDocument(&plan)
			d2, _ := NewDocument(&again)
			if string(d1.JSON) != string(d2.JSON) || d1.ETag != d2.ETag {
				t.Error("same input gave different documents")
			}
		})
	}
}

func TestOrderPendingActiveFrom(t *testing.T) {
	plan, err := Order([]URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, on), ver("v2", t0.Add(time.Hour), on)}}}, t0.Add(2*time.Hour), 2*time.Hour, KIDHex)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range plan.Keys {
		if k.Version.ID == "v2" && !k.ActiveFrom.Equal(t0.Add(3*time.Hour)) {
			t.Fatalf("v2 ActiveFrom %s", k.ActiveFrom)
		}
		if len(k.KID) != 64 {
			t.Fatalf("hex kid %q", k.KID)
		}
	}
}

func TestOrderRefusesPublishedWithoutKey(t *testing.T) {
	_, err := Order([]URIVersions{{URI: "k", Versions: []backends.Version{{ID: "v1", State: on}}}}, t0, 0, KIDThumbprint)
	if err == nil || !strings.Contains(err.Error(), "v1") {
		t.Fatalf("err %v", err)
	}
}

func TestDocumentStable(t *testing.T) {
	uris := []URIVersions{{URI: "k", Versions: []backends.Version{ver("v1", t0, on), ver("v2", t0.Add(time.Hour), on)}}}
	// Before and after v2 becomes active the published set is the same, so
	// the bytes and the ETag do not change.
	p1, _ := Order(uris, t0.Add(time.Hour), 2*time.Hour, KIDThumbprint)
	p2, _ := Order(uris, t0.Add(5*time.Hour), 2*time.Hour, KIDThumbprint)
	d1, _ := NewDocument(&p1)
	d2, _ := NewDocument(&p2)
	if string(d1.JSON) != string(d2.JSON) || d1.ETag != d2.ETag {
		t.Fatalf("document changed with the active version:\n%s\n%s", d1.JSON, d2.JSON)
	}
	if !strings.HasPrefix(d1.ETag, `"`) || strings.HasPrefix(d1.ETag, `W/`) {
		t.Fatalf("ETag %s is not strong", d1.ETag)
	}
	if !strings.HasPrefix(string(d1.JSON), `{"keys":[{"kty":"EC","crv":"P-256","x":"`) {
		t.Fatalf("unexpected member order: %s", d1.JSON)
	}
	// A different set gives a different ETag.
	p3, _ := Order(uris[:1:1], t0, 0, KIDHex)
	d3, _ := NewDocument(&p3)
	if d3.ETag == d1.ETag {
		t.Fatal("different key sets share an ETag")
	}
}
