package jwks

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kmsgate/kmsgate/backends"
)

// Role is what a published key version is doing now.
type Role string

const (
	// RoleActive: the version that signs.
	RoleActive Role = "active"
	// RolePending: newer than the active version; published, not signing yet.
	RolePending Role = "pending"
	// RoleRetiring: older than the active version; published until disabled.
	RoleRetiring Role = "retiring"
	// RolePublished: published only (a key of a URI after the first, or a
	// PEM key after the first).
	RolePublished Role = "published"
)

// URIVersions is the input of Order for one key URI: its versions as the
// backend last reported them.
type URIVersions struct {
	URI      string
	Ordering backends.Ordering
	Versions []backends.Version
	// UsableSince holds, by version id, when a version was first seen
	// usable, for versions that became usable (re-enabled) while the
	// keyring watched; such a version is pending for prepublish from then
	// if that is later than its creation. Others count from creation.
	UsableSince map[string]time.Time
}

// Key is one published key version with its kid and role.
type Key struct {
	URI     string
	Version backends.Version
	KID     string
	Role    Role
	// ActiveFrom is when a pending version of the first URI starts to sign;
	// zero for every other key.
	ActiveFrom time.Time
	// source is the index of the URI in the Order input.
	source int
}

// Plan is the key set for one moment: the published keys in JWKS order,
// which one signs, and when the choice next changes.
type Plan struct {
	Keys []Key
	// Active indexes Keys; -1 when no version can sign.
	Active int
	// NextChange is the earliest time a pending version becomes active; zero
	// when nothing is pending.
	NextChange time.Time
}

// ActiveKey returns the signing key, or false when no version can sign.
func (p *Plan) ActiveKey() (Key, bool) {
	if p.Active < 0 {
		return Key{}, false
	}
	return p.Keys[p.Active], true
}

// Order applies the rotation rules to the versions of every URI at the time
// now. It depends on nothing else, so every replica with the same backend
// state and clock makes the same choice.
//
// Only published versions are kept (see backends.State). Within a ByCreation
// URI, versions are ordered by creation time then version id; the active
// version is the newest signable one published for at least prepublish, or
// the oldest signable one when none is that old. A version is taken as
// published since its creation, or since u.UsableSince when that is later
// (a version re-enabled while the keyring watched). Newer versions are pending, older
// ones retiring. Within a FirstSigns URI the first signable key is active and
// the others are published. Only the first URI signs; every version of the
// other URIs is published. A kid seen twice is published once, first wins.
func Order(uris []URIVersions, now time.Time, prepublish time.Duration, f KIDFormat) (Plan, error) {
	plan := Plan{Active: -1}
	seen := map[string]bool{}
	for i, u := range uris {
		vs := make([]backends.Version, 0, len(u.Versions))
		for _, v := range u.Versions {
			if !v.State.Published() {
				continue
			}
			if v.PublicKey == nil {
				return Plan{}, fmt.Errorf("jwks: %s: version %s is %s but has no public key", backends.Redact(u.URI), v.ID, v.State)
			}
			vs = append(vs, v)
		}
		active := -1
		if u.Ordering == backends.ByCreation {
			slices.SortStableFunc(vs, func(a, b backends.Version) int {
				if c := a.Created.Compare(b.Created); c != 0 {
					return c
				}
				return naturalCompare(a.ID, b.ID)
			})
			active = pickActive(vs, u.UsableSince, now, prepublish)
		} else {
			active = slices.IndexFunc(vs, func(v backends.Version) bool { return v.State.CanSign() })
		}
		for j, v := range vs {
			kid, err := KID(v.PublicKey, f)
			if err != nil {
				return Plan{}, err
			}
			if seen[kid] {
				continue
			}
			seen[kid] = true
			k := Key{URI: u.URI, Version: v, KID: kid, Role: RolePublished, source: i}
			if i == 0 && u.Ordering == backends.ByCreation && active >= 0 {
				switch {
				case j == active:
					k.Role = RoleActive
				case j > active:
					k.Role = RolePending
					if v.State.CanSign() {
						k.ActiveFrom = publishedSince(v, u.UsableSince).Add(prepublish)
						if plan.NextChange.IsZero() || k.ActiveFrom.Before(plan.NextChange) {
							plan.NextChange = k.ActiveFrom
						}
					}
				default:
					k.Role = RoleRetiring
				}
			} else if i == 0 && j == active {
				k.Role = RoleActive
			}
			if k.Role == RoleActive {
				plan.Active = len(plan.Keys)
			}
			plan.Keys = append(plan.Keys, k)
		}
	}
	return plan, nil
}

// publishedSince is when a version counts as published from: its creation,
// or when it was seen becoming usable, whichever is later.
func publishedSince(v backends.Version, usableSince map[string]time.Time) time.Time {
	if t, ok := usableSince[v.ID]; ok && t.After(v.Created) {
		return t
	}
	return v.Created
}

// pickActive returns the index in vs (sorted by creation) of the version that
// signs: the newest signable one published at least prepublish before now,
// or else the oldest signable one; -1 when none can sign.
func pickActive(vs []backends.Version, usableSince map[string]time.Time, now time.Time, prepublish time.Duration) int {
	oldest, newestRipe := -1, -1
	for j, v := range vs {
		if !v.State.CanSign() {
			continue
		}
		if oldest < 0 {
			oldest = j
		}
		if !publishedSince(v, usableSince).Add(prepublish).After(now) {
			newestRipe = j
		}
	}
	if newestRipe >= 0 {
		return newestRipe
	}
	return oldest
}

// naturalCompare orders version ids so that embedded numbers compare by
// value: ".../cryptoKeyVersions/2" before ".../cryptoKeyVersions/10".
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := len(na) - len(nb); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func digitPrefix(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// Document is the served form of a key set: the JSON bytes and their strong
// ETag.
type Document struct {
	JSON []byte
	ETag string
}

// NewDocument serialises the keys of a plan in their order. The same keys
// always give the same bytes and ETag.
func NewDocument(p *Plan) (Document, error) {
	set := struct {
		Keys []JWK `json:"keys"`
	}{Keys: make([]JWK, 0, len(p.Keys))}
	for _, k := range p.Keys {
		set.Keys = append(set.Keys, NewJWK(k.Version.PublicKey, k.KID))
	}
	b, err := json.Marshal(set)
	if err != nil {
		return Document{}, fmt.Errorf("jwks: encode key set: %w", err)
	}
	sum := sha256.Sum256(b)
	return Document{JSON: b, ETag: `"` + base64.RawURLEncoding.EncodeToString(sum[:]) + `"`}, nil
}
