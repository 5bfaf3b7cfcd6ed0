// Command localkms runs local-kms (github.com/nsmithuk/local-kms), a Go
// implementation of the AWS KMS API, as the test server of the awskms
// backend. Unlike local-kms's own command it listens on 127.0.0.1 only, on a
// free port, and writes its base URL to a file once it accepts connections:
//
//	localkms -addr-file DIR/addr -data DIR/data
//
// It is a test tool: it lives in its own module so that local-kms never
// enters the main module's go.mod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	localkms "github.com/nsmithuk/local-kms/src"
	"github.com/nsmithuk/local-kms/src/config"
	"github.com/nsmithuk/local-kms/src/data"
)

func main() {
	addrFile := flag.String("addr-file", "", "file to write the base URL (http://127.0.0.1:PORT) to once listening (required)")
	dataDir := flag.String("data", "", "directory of the key database; must not be shared with another process (required)")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on; must be a loopback address")
	region := flag.String("region", "eu-west-2", "AWS region in the ARNs local-kms makes")
	account := flag.String("account", "111122223333", "AWS account id in the ARNs local-kms makes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *addrFile, *dataDir, *listen, *region, *account); err != nil {
		log.Fatalf("localkms: %v", err)
	}
}

// run serves local-kms until ctx ends.
func run(ctx context.Context, addrFile, dataDir, listen, region, account string) error {
	if addrFile == "" || dataDir == "" {
		return errors.New("-addr-file and -data are required")
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-listen %q: not a loopback address", listen)
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	config.AWSRegion, config.AWSAccountId, config.DatabasePath = region, account, abs
	db := data.NewDatabase(abs)
	defer db.Close()

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			localkms.HandleRequest(w, r, db)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	base := "http://" + ln.Addr().String()
	tmp := addrFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(base+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, addrFile); err != nil {
		return err
	}
	log.Printf("localkms: listening on %s, data in %s", base, abs)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
