//go:build pkcs11 && cgo

package pkcs11

import (
	"errors"
	"fmt"
	"os"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsgate/kmsgate/backends"
)

// module is one loaded and initialised PKCS#11 library. A library may be
// initialised once per process, and its login state is shared by every
// session of the process on a token, so every key URI naming the same
// module-path shares one module.
type module struct {
	path string
	ctx  *p11.Ctx
	refs int // guarded by modules.mu
}

var modules = struct {
	mu sync.Mutex
	m  map[string]*module
}{m: map[string]*module{}}

// loadModule returns the module at path, loading and initialising it on
// first use. Each call must be paired with a release.
func loadModule(path string) (*module, error) {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	if m := modules.m[path]; m != nil {
		m.refs++
		return m, nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: module-path: %v", backends.ErrConfig, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: module-path %s is not a regular file", backends.ErrConfig, path)
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: module-path %s could not be loaded as a PKCS#11 library (dlopen failed or it has no C_GetFunctionList)", backends.ErrConfig, path)
	}
	if err := ctx.Initialize(); err != nil && !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("%w: module-path %s: C_Initialize: %v", backends.ErrConfig, path, err)
	}
	m := &module{path: path, ctx: ctx, refs: 1}
	modules.m[path] = m
	return m, nil
}

// release drops one reference; the last one finalises and unloads the
// library.
func (m *module) release() {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.m, m.path)
	_ = m.ctx.Finalize()
	m.ctx.Destroy()
}

// isCode reports whether err is the PKCS#11 return value code.
func isCode(err error, code uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == code
}

// code returns the PKCS#11 return value err carries, or 0 (CKR_OK) when it
// carries none.
func code(err error) uint {
	var e p11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return 0
}
