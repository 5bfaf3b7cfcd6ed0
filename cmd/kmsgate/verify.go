package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsgate/kmsgate/jwks/verify"
)

func newVerifyCmd() *cobra.Command {
	var (
		jwksFrom string
		want     verify.Expect
	)
	cmd := &cobra.Command{
		Use:   "verify --jwks URL|FILE [TOKEN|-]",
		Short: "Verify a token against a JWKS (URL or file) and print its claims; the token is read from stdin when given as - or left out",
		Args:  rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if jwksFrom == "" {
				return usagef("--jwks is required (a URL or a file)")
			}
			token, err := tokenArg(cmd, args)
			if err != nil {
				return err
			}
			data, err := readJWKS(cmd.Context(), jwksFrom)
			if err != nil {
				return err
			}
			set, err := verify.ParseSet(data)
			if err != nil {
				return fmt.Errorf("%s: %w", jwksFrom, err)
			}
			claims, err := verify.VerifyWithSet(token, set, want)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(claims)
		},
	}
	cmd.Flags().StringVar(&jwksFrom, "jwks", "", "JWKS URL (http:// or https://) or file")
	cmd.Flags().StringVar(&want.Issuer, "issuer", "", "required iss (empty: any)")
	cmd.Flags().StringVar(&want.Audience, "audience", "", "required aud (empty: any)")
	cmd.Flags().DurationVar(&want.Leeway, "leeway", 30*time.Second, "allowed clock skew")
	return cmd
}

// tokenArg returns the token: the argument, or standard input when the
// argument is "-" or absent (then stdin must not be a terminal).
func tokenArg(cmd *cobra.Command, args []string) (string, error) {
	if len(args) == 1 && args[0] != "-" {
		return strings.TrimSpace(args[0]), nil
	}
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && len(args) == 0 {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			return "", usagef("no token: give it as an argument, or pipe it in (kmsgate sign … | kmsgate verify --jwks …)")
		}
	}
	b, err := io.ReadAll(io.LimitReader(in, 1<<20))
	if err != nil {
		return "", fmt.Errorf("read the token from stdin: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", usagef("no token on stdin")
	}
	return tok, nil
}

// readJWKS reads a key set from a URL (10 s timeout, 1 MiB at most) or a file.
func readJWKS(ctx context.Context, from string) ([]byte, error) {
	if !strings.HasPrefix(from, "http://") && !strings.HasPrefix(from, "https://") {
		b, err := os.ReadFile(from)
		if err != nil {
			return nil, fmt.Errorf("read JWKS: %w", err)
		}
		return b, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, from, nil)
	if err != nil {
		return nil, usagef("--jwks %q: %v", from, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS %s: status %s", from, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	return b, nil
}
