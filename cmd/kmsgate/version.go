package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// version, commit and date may be set at build time by a packager, with
// -ldflags "-X main.version=v1.2.3 -X main.commit=… -X main.date=…";
// without them they come from what Go records in every binary (see
// buildInfo).
var version, commit, date = "", "", ""

// build describes this binary.
type build struct {
	Version, Commit, Date string
	Modified              bool // built from a tree with uncommitted changes
}

// buildInfo returns the binary's version, commit and date. `go build` and
// `make build` in a git checkout record the commit, its time and a
// version derived from the tags (Go 1.24+); `go install …@v1.2.3`
// records the module version. The date is the commit's, so that the same
// source builds the same binary.
func buildInfo() build {
	b := build{Version: version, Commit: commit, Date: date}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.Commit == "" {
					b.Commit = s.Value
				}
			case "vcs.time":
				if b.Date == "" {
					b.Date = s.Value
				}
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	return b
}

func versionString() string {
	b := buildInfo()
	s := "kmsgate " + b.Version
	var parts []string
	if b.Commit != "" {
		c := b.Commit
		if b.Modified {
			c += " modified"
		}
		parts = append(parts, "commit "+c)
	}
	if b.Date != "" {
		parts = append(parts, b.Date)
	}
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return fmt.Sprintf("%s %s %s/%s", s, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), versionString())
			return err
		},
	}
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// contextWithTimeout bounds one request's work, backend calls included.
func contextWithTimeout(cmd *cobra.Command, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		d = 5 * time.Second
	}
	return context.WithTimeout(cmd.Context(), d)
}
