// Command app is the application of the compose demo (deploy/compose): it
// sits behind kmsgate, verifies the signed assertion kmsgate adds to every
// request against kmsgate's JWKS, and answers with the verified claims.
// Requests without a valid assertion get 401.
//
// Environment:
//
//	KMSGATE_JWKS_URL          kmsgate's key set, e.g. http://kmsgate:8080/.well-known/jwks.json
//	KMSGATE_ISSUER            kmsgate's --issuer
//	APP_AUDIENCE              the aud kmsgate signs for this app (the upstream host name, e.g. app)
//	KMSGATE_ASSERTION_HEADER  header name (default X-Kmsgate-Jwt-Assertion)
//	APP_LISTEN                listen address (default :8000)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kmsgate/kmsgate/jwks/verify"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("app stopped", "err", err.Error())
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	cfg := verify.VerifierConfig{
		JWKSURL:  os.Getenv("KMSGATE_JWKS_URL"),
		Issuer:   os.Getenv("KMSGATE_ISSUER"),
		Audience: os.Getenv("APP_AUDIENCE"),
		Header:   os.Getenv("KMSGATE_ASSERTION_HEADER"),
		Logger:   log,
	}
	listen := os.Getenv("APP_LISTEN")
	if listen == "" {
		listen = ":8000"
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	v, err := verify.NewVerifier(ctx, cfg)
	if err != nil {
		return fmt.Errorf("verifier (KMSGATE_JWKS_URL, KMSGATE_ISSUER, APP_AUDIENCE): %w", err)
	}
	defer v.Close()

	srv := &http.Server{Addr: listen, Handler: v.Middleware(http.HandlerFunc(showClaims)), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("listening", "addr", listen, "jwks", cfg.JWKSURL)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// showClaims answers with the claims Middleware verified.
func showClaims(w http.ResponseWriter, r *http.Request) {
	c, ok := verify.ClaimsFromContext(r.Context())
	if !ok {
		http.Error(w, "no verified assertion", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(map[string]any{
		"message": fmt.Sprintf("hello %s, kmsgate vouches for you", c.User),
		"path":    r.URL.Path,
		"claims":  c.Raw,
	})
}
