package awskms_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/kmsgate/kmsgate/backends/awskms"
	"github.com/kmsgate/kmsgate/backends/backendtest"
)

// FuzzParseURI checks the awskms URI parser: no input panics; a refused URI
// gets ErrInvalidURI with a reason and never shows a credential planted in
// it (user info, a query value, the user info of ?endpoint=); an accepted
// URI names exactly one of a key and an alias prefix, and its canonical form
// (the key in the path, region and endpoint as parameters) parses to the
// same target.
func FuzzParseURI(f *testing.F) {
	const id = "1234abcd-12ab-34cd-56ef-1234567890ab"
	for _, s := range []string{
		"awskms:///alias/jwt",
		"awskms:///alias/team/jwt-2025_01",
		"awskms:///" + id,
		"awskms:///mrk-1234abcd12ab34cd56ef1234567890ab",
		"awskms:///arn:aws:kms:us-east-2:111122223333:key/" + id,
		"awskms:///arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/jwt",
		"awskms:///arn:aws:kms:eu-west-1:111122223333:alias/jwt/",
		"awskms:///alias/jwt/",
		"awskms:///alias/jwt?region=eu-central-1",
		"awskms://127.0.0.1:4566/alias/jwt",
		"awskms://[::1]:4566/" + id,
		"awskms://localhost:4566/alias/jwt/",
		"awskms://kms.us-east-1.amazonaws.com/alias/jwt",
		"awskms:///alias/jwt?endpoint=https://vpce-1.kms.us-east-1.vpce.amazonaws.com",
		"awskms:///alias/jwt?endpoint=http://kms-emulator:8080/",
		"awskms://alias/jwt",
		"awskms:///alias//",
		"awskms:///arn:aws:kms:us-east-1:111122223333:alias/jwt?region=eu-west-1",
		"awskms:///alias/jwt?endpoint=https://user:pw@x",
		"awskms://user:secret@127.0.0.1/alias/jwt",
		"awskms:///alias/jwt?region=a&region=b",
		"awskms:alias/jwt",
		"awskms:///alias/%6Awt",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		variants := append([]string{uri}, backendtest.WithSecret(uri)...)
		// A credential in the user info of ?endpoint=.
		base, frag, hasFrag := strings.Cut(uri, "#")
		sep := "?"
		if strings.Contains(base, "?") {
			sep = "&"
		}
		v := base + sep + "endpoint=https://kmsgate:" + backendtest.Secret + "@kms.example.com"
		if hasFrag {
			v += "#" + frag
		}
		variants = append(variants, v)
		for _, s := range variants {
			u, err := url.Parse(s)
			if err != nil {
				continue // refused before the backend sees it (see backends.FuzzOpen)
			}
			tg, err := awskms.ParseURI(u)
			if err != nil {
				backendtest.CheckRefusal(t, uri, s, err)
				continue
			}
			if (tg.Ref() == "") == (tg.Prefix() == "") {
				t.Fatalf("%q: ref %q and prefix %q; want exactly one", s, tg.Ref(), tg.Prefix())
			}
			if p := tg.Prefix(); p != "" && !strings.HasSuffix(p, "/") {
				t.Fatalf("%q: prefix %q does not end in /", s, p)
			}
			if ep := tg.Endpoint(); ep != "" && !strings.HasPrefix(ep, "http://") && !strings.HasPrefix(ep, "https://") {
				t.Fatalf("%q: endpoint %q is not an http(s) URL", s, ep)
			}
			q := url.Values{}
			if tg.Region() != "" {
				q.Set("region", tg.Region())
			}
			if tg.Endpoint() != "" {
				q.Set("endpoint", tg.Endpoint())
			}
			canon := (&url.URL{Scheme: "awskms", Path: "/" + tg.Ref() + tg.Prefix(), RawQuery: q.Encode()}).String()
			cu, err := url.Parse(canon)
			if err != nil {
				t.Fatalf("%q: canonical form %q does not parse: %v", s, canon, err)
			}
			again, err := awskms.ParseURI(cu)
			if err != nil || again.Ref() != tg.Ref() || again.Prefix() != tg.Prefix() || again.Region() != tg.Region() || again.Endpoint() != tg.Endpoint() {
				t.Fatalf("%q parsed to ref %q prefix %q region %q endpoint %q, but its canonical form %q to %q %q %q %q, %v", s,
					tg.Ref(), tg.Prefix(), tg.Region(), tg.Endpoint(), canon, again.Ref(), again.Prefix(), again.Region(), again.Endpoint(), err)
			}
		}
	})
}
