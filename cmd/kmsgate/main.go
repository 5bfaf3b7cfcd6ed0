// Command kmsgate is the ES256 signing gateway: it serves the JWKS of keys held
// in a KMS, signs JWTs on request and adds signed identity headers to the
// requests it forwards. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cmd, err := newRootCmd().ExecuteContextC(ctx)
	stop()
	path := "kmsgate"
	if cmd != nil {
		path = cmd.CommandPath()
	}
	os.Exit(exitCode(err, path))
}

// usageError marks an error in how the command was called (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitCode prints err to stderr and returns 0, 1 for a failure, or 2 for a
// usage error, which points at the help of the command that was run.
func exitCode(err error, command string) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "kmsgate:", err)
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		fmt.Fprintf(os.Stderr, "Run '%s --help' for usage.\n", command)
		return 2
	}
	return 1
}
