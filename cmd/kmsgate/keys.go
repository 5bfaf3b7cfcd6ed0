package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/backends/pem"
	"github.com/kmsgate/kmsgate/jwks"
)

func newKeysCmd() *cobra.Command {
	var kf keyFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "List the key versions with kid, role, state and when a pending one starts to sign",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			kr, closeAll, err := kf.load(cmd.Context())
			if err != nil {
				return err
			}
			defer closeAll()
			return printKeys(cmd.OutOrStdout(), kr.State().Plan.Keys, kf.prepublish, asJSON)
		},
	}
	kf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

// enabledNote is said of an active version chosen by creation time.
const enabledNote = "active by creation time: if this version was enabled (again) less than %s (--prepublish) ago, verifiers may not have its key yet; see README, Rotation"

func printKeys(w io.Writer, keys []jwks.Key, prepublish time.Duration, asJSON bool) error {
	type row struct {
		KID        string `json:"kid"`
		Role       string `json:"role"`
		State      string `json:"state"`
		Created    string `json:"created,omitempty"`
		ActiveFrom string `json:"active_from,omitempty"`
		BackendID  string `json:"backend_id"`
		URI        string `json:"uri"`
		Note       string `json:"note,omitempty"`
	}
	rows := make([]row, 0, len(keys))
	for _, k := range keys {
		r := row{KID: k.KID, Role: string(k.Role), State: string(k.Version.State), BackendID: k.Version.ID, URI: backends.Redact(k.URI)}
		if !k.Version.Created.IsZero() {
			r.Created = k.Version.Created.UTC().Format(time.RFC3339)
		}
		if !k.ActiveFrom.IsZero() {
			r.ActiveFrom = k.ActiveFrom.UTC().Format(time.RFC3339)
		}
		if k.Role == jwks.RoleActive && !k.Version.Created.IsZero() {
			// A fresh process cannot see when a version was enabled.
			r.Note = fmt.Sprintf(enabledNote, prepublish)
		}
		rows = append(rows, r)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KID\tROLE\tSTATE\tCREATED\tACTIVE FROM\tBACKEND ID\tURI")
	note := ""
	for _, r := range rows {
		role := r.Role
		if r.Note != "" {
			role, note = role+"*", r.Note
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.KID, role, r.State, dash(r.Created), dash(r.ActiveFrom), r.BackendID, r.URI)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if note != "" {
		_, err := fmt.Fprintf(w, "\n* %s\n", note)
		return err
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newJWKSCmd() *cobra.Command {
	var kf keyFlags
	cmd := &cobra.Command{
		Use:   "jwks",
		Short: "Print the JWKS document the gateway would serve",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			kr, closeAll, err := kf.load(cmd.Context())
			if err != nil {
				return err
			}
			defer closeAll()
			_, err = cmd.OutOrStdout().Write(append(kr.State().Document.JSON, '\n'))
			return err
		},
	}
	kf.register(cmd)
	return cmd
}

func newSignCmd() *cobra.Command {
	var (
		kf       keyFlags
		issuer   string
		ttl      time.Duration
		claimsIn string
		partial  bool
	)
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Sign claims (JSON from --claims, or stdin with --claims -) and print the JWT",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw := []byte(claimsIn)
			if claimsIn == "-" {
				b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
				if err != nil {
					return fmt.Errorf("read claims from stdin: %w", err)
				}
				raw = b
			}
			claims := map[string]any{}
			if len(bytes.TrimSpace(raw)) > 0 {
				dec := json.NewDecoder(bytes.NewReader(raw))
				dec.UseNumber()
				if err := dec.Decode(&claims); err != nil {
					return usagef("--claims: not a JSON object: %v", err)
				}
			}
			if !partial {
				var missing []string
				for _, name := range []string{"sub", "aud"} {
					if v, ok := claims[name]; !ok || v == nil || v == "" {
						missing = append(missing, name)
					}
				}
				if len(missing) > 0 {
					return usagef("--claims has no %s: a token names who it is about (sub) and for whom (aud); --allow-missing-claims signs without them", strings.Join(missing, " and no "))
				}
			}
			full, err := jwks.NewClaims(issuer, time.Now(), ttl, claims)
			if err != nil {
				return usageError{err}
			}
			kr, closeAll, err := kf.load(cmd.Context())
			if err != nil {
				return err
			}
			defer closeAll()
			ctx, cancel := contextWithTimeout(cmd, kf.requestTimeout)
			defer cancel()
			tok, _, err := kr.SignJWT(ctx, full)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
	kf.register(cmd)
	cmd.Flags().StringVar(&issuer, "issuer", "kmsgate", "iss claim")
	cmd.Flags().DurationVar(&ttl, "ttl", 5*time.Minute, "lifetime: exp = iat + ttl")
	cmd.Flags().BoolVar(&partial, "allow-missing-claims", false, "sign claims without sub or aud")
	cmd.Flags().StringVar(&claimsIn, "claims", "", `claims as a JSON object, e.g. '{"sub":"alice","aud":"app"}', or - for stdin`)
	return cmd
}

func newGenkeyCmd() *cobra.Command {
	var (
		b64 bool
		out string
	)
	cmd := &cobra.Command{
		Use:   "genkey",
		Short: "Print a new P-256 private key as PEM (SEC1), for file:// and env:// keys; --out writes it to a new file readable by its owner only",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := pem.Generate()
			if err != nil {
				return err
			}
			if b64 {
				p = []byte(base64Std(p) + "\n")
			}
			if out == "" {
				_, err = cmd.OutOrStdout().Write(p)
				return err
			}
			// A new file, 0600, never over an existing one (an old key
			// may still sign or verify).
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				if errors.Is(err, os.ErrExist) {
					return fmt.Errorf("--out %s exists; genkey never overwrites a key (remove it first if you mean to)", out)
				}
				return fmt.Errorf("--out: %w", err)
			}
			if _, err := f.Write(p); err != nil {
				f.Close()
				return fmt.Errorf("--out %s: %w", out, err)
			}
			return f.Close()
		},
	}
	cmd.Flags().BoolVar(&b64, "base64", false, "print the PEM base64 encoded (Pomerium's SIGNING_KEY form)")
	cmd.Flags().StringVar(&out, "out", "", "write the key to this new file (mode 0600) instead of stdout")
	return cmd
}
