package awskms_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/awskms"
)

func TestParseURI(t *testing.T) {
	const (
		id     = "1234abcd-12ab-34cd-56ef-1234567890ab"
		keyARN = "arn:aws:kms:us-east-2:111122223333:key/" + id
	)
	for _, c := range []struct {
		uri                           string
		ref, prefix, region, endpoint string
	}{
		{uri: "awskms:///alias/jwt", ref: "alias/jwt"},
		{uri: "awskms:///alias/team/jwt-2025_01", ref: "alias/team/jwt-2025_01"},
		{uri: "awskms:///" + id, ref: id},
		{uri: "awskms:///mrk-1234abcd12ab34cd56ef1234567890ab", ref: "mrk-1234abcd12ab34cd56ef1234567890ab"},
		{uri: "awskms:///" + keyARN, ref: keyARN, region: "us-east-2"},
		{uri: "awskms:///arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/jwt", ref: "arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/jwt", region: "us-gov-west-1"},
		{uri: "awskms:///alias/jwt/", prefix: "alias/jwt/"},
		{uri: "awskms:///arn:aws:kms:eu-west-1:111122223333:alias/jwt/", prefix: "arn:aws:kms:eu-west-1:111122223333:alias/jwt/", region: "eu-west-1"},
		{uri: "awskms:///alias/jwt?region=eu-central-1", ref: "alias/jwt", region: "eu-central-1"},
		{uri: "awskms:///" + keyARN + "?region=us-east-2", ref: keyARN, region: "us-east-2"},
		{uri: "awskms://127.0.0.1:4566/alias/jwt", ref: "alias/jwt", endpoint: "http://127.0.0.1:4566"},
		{uri: "awskms://localhost:4566/alias/jwt/", prefix: "alias/jwt/", endpoint: "http://localhost:4566"},
		{uri: "awskms://[::1]:4566/" + id, ref: id, endpoint: "http://[::1]:4566"},
		{uri: "awskms://kms.us-east-1.amazonaws.com/alias/jwt", ref: "alias/jwt", endpoint: "https://kms.us-east-1.amazonaws.com"},
		{uri: "awskms://10.0.0.5:443/alias/jwt", ref: "alias/jwt", endpoint: "https://10.0.0.5:443"},
		{uri: "awskms:///alias/jwt?endpoint=https://vpce-1.kms.us-east-1.vpce.amazonaws.com", ref: "alias/jwt", endpoint: "https://vpce-1.kms.us-east-1.vpce.amazonaws.com"},
		{uri: "awskms:///alias/jwt?endpoint=http://kms-emulator:8080/", ref: "alias/jwt", endpoint: "http://kms-emulator:8080"},
	} {
		u, err := url.Parse(c.uri)
		if err != nil {
			t.Fatal(err)
		}
		got, err := awskms.ParseURI(u)
		if err != nil {
			t.Errorf("%s: %v", c.uri, err)
			continue
		}
		if got.Ref() != c.ref || got.Prefix() != c.prefix || got.Region() != c.region || got.Endpoint() != c.endpoint {
			t.Errorf("%s: ref %q prefix %q region %q endpoint %q; want %q %q %q %q", c.uri,
				got.Ref(), got.Prefix(), got.Region(), got.Endpoint(), c.ref, c.prefix, c.region, c.endpoint)
		}
	}
}

func TestParseURIRefused(t *testing.T) {
	for _, c := range []struct{ uri, why string }{
		{"awskms:///", "no key named"},
		{"awskms://", "no key named"},
		{"awskms://alias/jwt", "three slashes"},
		{"awskms://1234abcd-12ab-34cd-56ef-1234567890ab/", "three slashes"},
		{"awskms:///jwt", "neither a key id"},
		{"awskms:///alias/", "alias prefix"},
		{"awskms:///alias//", "alias prefix"},
		{"awskms:///alias/jwt key", "alias"},
		{"awskms:///1234ABCD-12AB-34CD-56EF-1234567890AB-extra", "neither a key id"},
		{"awskms:///arn:aws:kms:us-east-1:111122223333:key/not-an-id", "not a key ARN"},
		{"awskms:///arn:aws:s3:::bucket", "not a KMS key or alias ARN"},
		{"awskms:///arn:aws:kms:us-east-1:111122223333:alias/jwt?region=eu-west-1", "contradicts"},
		{"awskms:///alias/jwt?region=", "with a value"},
		{"awskms:///alias/jwt?region=a&region=b", "once"},
		{"awskms:///alias/jwt?region=Not_A_Region", "not an AWS region"},
		{"awskms:///alias/jwt?profile=prod", "unknown parameter"},
		{"awskms:///alias/jwt?endpoint=ftp://x", "http:// or https://"},
		{"awskms:///alias/jwt?endpoint=https://x/path", "nothing more"},
		{"awskms:///alias/jwt?endpoint=https://user:pw@x", "nothing more"},
		{"awskms://127.0.0.1:4566/alias/jwt?endpoint=https://x", "both a host"},
		{"awskms://user:secret@127.0.0.1/alias/jwt", "want awskms"},
		{"awskms:///alias/jwt#frag", "want awskms"},
		{"awskms:alias/jwt", "want awskms"},
		{"gcpkms:///alias/jwt", "scheme"},
	} {
		u, err := url.Parse(c.uri)
		if err != nil {
			t.Fatal(err)
		}
		_, err = awskms.ParseURI(u)
		if !errors.Is(err, backends.ErrInvalidURI) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v; want ErrInvalidURI mentioning %q", c.uri, err, c.why)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error %q shows the URI's password", c.uri, err)
		}
	}
}

// TestOpenNeedsRegion: without a region from the URI, an ARN, the
// environment or a profile, Open refuses the URI instead of guessing.
func TestOpenNeedsRegion(t *testing.T) {
	awsTestEnv(t, true)
	t.Setenv("AWS_REGION", "")
	_, err := backends.Open(context.Background(), "awskms:///alias/jwt", backends.Options{})
	if !errors.Is(err, backends.ErrInvalidURI) || !strings.Contains(err.Error(), "no AWS region") {
		t.Fatalf("%v, want ErrInvalidURI about the region", err)
	}
	for _, uri := range []string{
		"awskms:///alias/jwt?region=eu-west-1",
		"awskms:///arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
	} {
		b, err := backends.Open(context.Background(), uri, backends.Options{})
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		b.Close()
	}
	t.Setenv("AWS_REGION", "ap-south-1")
	b, err := backends.Open(context.Background(), "awskms:///alias/jwt", backends.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
}

func TestMapState(t *testing.T) {
	for in, want := range map[types.KeyState]backends.State{
		types.KeyStateEnabled:                backends.StateEnabled,
		types.KeyStateUpdating:               backends.StateEnabled,
		types.KeyStateDisabled:               backends.StateDisabled,
		types.KeyStatePendingDeletion:        backends.StatePendingDeletion,
		types.KeyStatePendingReplicaDeletion: backends.StatePendingDeletion,
		types.KeyStatePendingImport:          backends.StatePendingImport,
		types.KeyStateUnavailable:            backends.StateUnavailable,
		types.KeyStateCreating:               backends.StatePendingGeneration,
		"SomethingNew":                       backends.StateUnavailable,
	} {
		if got := awskms.MapState(in); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}
