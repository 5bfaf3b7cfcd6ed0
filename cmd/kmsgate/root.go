package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/jwks"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "kmsgate",
		Short:         "ES256 signing gateway for keys held in a KMS",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       versionString(),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.PersistentFlags().String("config", "", "YAML config file; every flag is also a top-level key (env KMSGATE_CONFIG)")
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn or error")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServeCmd(), newKeysCmd(), newJWKSCmd(), newSignCmd(), newVerifyCmd(), newGenkeyCmd(), newVersionCmd())
	known := flagNames(root)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		var cfg *fileConfig
		path, _ := cmd.Flags().GetString("config")
		if !cmd.Flags().Changed("config") {
			path = os.Getenv(envName("config"))
		}
		if path != "" {
			c, err := loadConfig(path, known)
			if err != nil {
				return err
			}
			cfg = c
		}
		if err := applyConfig(cmd, cfg); err != nil {
			return err
		}
		level, _ := cmd.Flags().GetString("log-level")
		var l slog.Level
		if err := l.UnmarshalText([]byte(level)); err != nil {
			return usagef("--log-level %q: want debug, info, warn or error", level)
		}
		slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})))
		for _, w := range unknownVariables(os.Environ(), known) {
			slog.Warn(w)
		}
		if cfg != nil {
			for _, w := range cfg.warnings {
				slog.Warn(w)
			}
		}
		cmd.SetContext(context.WithValue(cmd.Context(), configKey{}, cfg))
		return nil
	}
	return root
}

type configKey struct{}

// configFrom returns the parsed --config file of a command, or nil.
func configFrom(cmd *cobra.Command) *fileConfig {
	c, _ := cmd.Context().Value(configKey{}).(*fileConfig)
	return c
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// rangeArgs is cobra.RangeArgs with a usage error.
func rangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.RangeArgs(lo, hi)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// keyFlags are the flags of every command that opens key URIs.
type keyFlags struct {
	keys           []string
	prepublish     time.Duration
	kidFormat      string
	backendQPS     float64
	requestTimeout time.Duration
	// devMode is set by serve --dev: backends accept settings meant for
	// development only (a PKCS#11 pin-value).
	devMode bool
}

func (k *keyFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSliceVar(&k.keys, "key", nil, "key URI, repeatable; the first URI signs (gcpkms://, awskms://, hashivault://, file://, env://, pkcs11:)")
	f.DurationVar(&k.prepublish, "prepublish", 2*time.Hour, "how long a new key version is published before it signs")
	f.StringVar(&k.kidFormat, "kid-format", "thumbprint", "kid form: thumbprint (RFC 7638, base64url) or hex (Pomerium)")
	f.Float64Var(&k.backendQPS, "backend-qps", 0, "client-side limit of calls per second to each backend (0: none)")
	f.DurationVar(&k.requestTimeout, "request-timeout", 5*time.Second, "deadline of one request, backend calls included")
}

// open opens every key URI (after pre, a source opened by the caller, if
// not nil) and builds the keyring.
func (k *keyFlags) open(ctx context.Context, cfg jwks.Config, pre *jwks.Source) (*jwks.Keyring, func(), error) {
	if len(k.keys) == 0 && pre == nil {
		return nil, nil, usagef("no --key given (or KMSGATE_KEY, or key: in the config file)")
	}
	if k.prepublish < 0 {
		return nil, nil, usagef("--prepublish %s is negative", k.prepublish)
	}
	f, err := jwks.ParseKIDFormat(k.kidFormat)
	if err != nil {
		return nil, nil, usageError{err}
	}
	cfg.KIDFormat, cfg.Prepublish = f, k.prepublish
	sources := make([]jwks.Source, 0, len(k.keys)+1)
	if pre != nil {
		sources = append(sources, *pre)
	}
	closeAll := func() {
		for _, s := range sources {
			_ = s.Backend.Close()
		}
	}
	for _, uri := range k.keys {
		b, err := backends.Open(ctx, uri, backends.Options{Logger: slog.Default(), QPS: k.backendQPS, Dev: k.devMode})
		if err != nil {
			closeAll()
			if errors.Is(err, backends.ErrInvalidURI) {
				return nil, nil, usageError{err}
			}
			return nil, nil, err
		}
		sources = append(sources, jwks.Source{URI: uri, Backend: b})
	}
	kr, err := jwks.NewKeyring(sources, cfg)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return kr, closeAll, nil
}

// load opens the keys and refreshes them once, failing on any error.
func (k *keyFlags) load(ctx context.Context) (*jwks.Keyring, func(), error) {
	kr, closeAll, err := k.open(ctx, jwks.Config{}, nil)
	if err != nil {
		return nil, nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, max(k.requestTimeout, 10*time.Second))
	defer cancel()
	if err := kr.Refresh(rctx); err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("load keys: %w", err)
	}
	return kr, closeAll, nil
}
