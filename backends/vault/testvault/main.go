// Command testvault runs a real HashiCorp Vault v1.4.0 core with the Transit
// secrets engine and the AppRole auth method, served over plain HTTP on
// 127.0.0.1, for kmsgate's tests of the Vault backend. It is a test tool: the
// root token is fixed and the unseal keys are written to disk.
//
// Usage:
//
//	testvault -addr-file FILE [-listen 127.0.0.1:0] [-root-token T] [-data DIR]
//
// Without -data the storage is in memory (vault.TestCoreUnsealedWithConfig).
// With -data the storage is a file backend in DIR and the unseal keys are kept
// in DIR/unseal-keys.json, so that a server stopped and started again on the
// same DIR has the same keys: tests use it to take Vault away and bring it
// back. The Transit engine is mounted at transit/; the root token has the
// fixed ID given by -root-token (default $TESTVAULT_ROOT_TOKEN, else
// "kmsgate-test-root"). Once serving, the address http://127.0.0.1:PORT is
// written to the -addr-file (atomically). SIGTERM or SIGINT stops it.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	kubeauth "github.com/hashicorp/vault-plugin-auth-kubernetes"
	"github.com/hashicorp/vault/builtin/credential/approle"
	"github.com/hashicorp/vault/builtin/logical/transit"
	"github.com/hashicorp/vault/helper/namespace"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/sdk/logical"
	physFile "github.com/hashicorp/vault/sdk/physical/file"
	"github.com/hashicorp/vault/vault"
	testinginterface "github.com/mitchellh/go-testing-interface"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback only)")
	addrFile := flag.String("addr-file", "", "file to write http://HOST:PORT to once serving (required)")
	rootToken := flag.String("root-token", envOr("TESTVAULT_ROOT_TOKEN", "kmsgate-test-root"), "fixed ID of the root token")
	dataDir := flag.String("data", "", "keep the storage and unseal keys in this directory (default: in memory)")
	logLevel := flag.String("log-level", "warn", "Vault log level (trace, debug, info, warn, error)")
	flag.Parse()
	if err := run(*listen, *addrFile, *rootToken, *dataDir, *logLevel); err != nil {
		fmt.Fprintln(os.Stderr, "testvault:", err)
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(listen, addrFile, rootToken, dataDir, logLevel string) (err error) {
	if addrFile == "" {
		return errors.New("-addr-file is required")
	}
	if rootToken == "" {
		return errors.New("-root-token is empty")
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-listen %q: only loopback addresses are allowed", listen)
	}
	// The vault test helpers report failures through a testing.T; RuntimeT
	// panics on Fatal, which is turned into an error here.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("vault: %v", r)
		}
	}()
	logger := hclog.New(&hclog.LoggerOptions{Name: "testvault", Level: hclog.LevelFromString(logLevel), Output: os.Stderr})
	conf := &vault.CoreConfig{
		Logger:             logger,
		LogicalBackends:    map[string]logical.Factory{"transit": transit.Factory},
		CredentialBackends: map[string]logical.Factory{"approle": approle.Factory, "kubernetes": kubeauth.Factory},
	}
	var core *vault.Core
	if dataDir == "" {
		var root string
		core, _, root = vault.TestCoreUnsealedWithConfig(&testinginterface.RuntimeT{}, conf)
		if err := setup(core, root, rootToken); err != nil {
			return err
		}
	} else if core, err = persistentCore(conf, dataDir, rootToken); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           vaulthttp.Handler(&vault.HandlerProperties{Core: core}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if err := writeAtomic(addrFile, []byte("http://"+ln.Addr().String()+"\n")); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case err := <-errc:
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	return core.Shutdown()
}

// setup gives the root token its fixed ID and mounts Transit at transit/.
func setup(core *vault.Core, root, fixed string) error {
	ctx := namespace.RootContext(context.Background())
	req := logical.TestRequest(nil, logical.UpdateOperation, "auth/token/create")
	req.ClientToken = root
	req.Data = map[string]interface{}{"id": fixed, "policies": []string{"root"}, "no_parent": true, "display_name": "kmsgate-test-root"}
	if resp, err := core.HandleRequest(ctx, req); err != nil || resp.IsError() {
		return fmt.Errorf("create the fixed root token: %v %v", err, resp)
	}
	req = logical.TestRequest(nil, logical.UpdateOperation, "sys/mounts/transit")
	req.ClientToken = fixed
	req.Data = map[string]interface{}{"type": "transit"}
	if resp, err := core.HandleRequest(ctx, req); err != nil || resp.IsError() {
		return fmt.Errorf("mount transit: %v %v", err, resp)
	}
	return nil
}

// persistentCore opens a core on a file backend in dir. The first time it
// initializes it, writes the unseal keys to dir/unseal-keys.json and runs
// setup; later it unseals it with the stored keys.
func persistentCore(conf *vault.CoreConfig, dir, rootToken string) (*vault.Core, error) {
	phys, err := physFile.NewFileBackend(map[string]string{"path": filepath.Join(dir, "storage")}, conf.Logger)
	if err != nil {
		return nil, err
	}
	conf.Physical = phys
	conf.DisableMlock = true
	conf.BuiltinRegistry = vault.NewMockBuiltinRegistry()
	core, err := vault.NewCore(conf)
	if err != nil {
		return nil, err
	}
	keysFile := filepath.Join(dir, "unseal-keys.json")
	inited, err := core.Initialized(context.Background())
	if err != nil {
		return nil, err
	}
	var keys [][]byte
	if !inited {
		var root string
		keys, root = vault.TestCoreInit(&testinginterface.RuntimeT{}, core)
		b64 := make([]string, len(keys))
		for i, k := range keys {
			b64[i] = base64.StdEncoding.EncodeToString(k)
		}
		js, _ := json.Marshal(map[string]any{"keys_base64": b64})
		if err := writeAtomic(keysFile, js); err != nil {
			return nil, err
		}
		if err := unseal(core, keys); err != nil {
			return nil, err
		}
		return core, setup(core, root, rootToken)
	}
	js, err := os.ReadFile(keysFile)
	if err != nil {
		return nil, err
	}
	var stored struct {
		Keys []string `json:"keys_base64"`
	}
	if err := json.Unmarshal(js, &stored); err != nil {
		return nil, fmt.Errorf("%s: %w", keysFile, err)
	}
	for _, s := range stored.Keys {
		k, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", keysFile, err)
		}
		keys = append(keys, k)
	}
	return core, unseal(core, keys)
}

func unseal(core *vault.Core, keys [][]byte) error {
	for _, k := range keys {
		if _, err := core.Unseal(vault.TestKeyCopy(k)); err != nil {
			return fmt.Errorf("unseal: %w", err)
		}
	}
	if core.Sealed() {
		return errors.New("still sealed after every unseal key")
	}
	return nil
}

// writeAtomic writes data to a temporary file next to name and renames it,
// so that a reader never sees a partial file.
func writeAtomic(name string, data []byte) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
