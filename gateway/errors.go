// Package gateway is kmsgate's HTTP server: the JWKS and discovery endpoints,
// the authenticated sign API, health, readiness and metrics, and the reverse
// proxy, on echo v4 routes behind a front that serves HTTP/1.x with fasthttp
// (the hot paths natively) and HTTP/2 with net/http (front.go).
package gateway

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/kmsgate/kmsgate/backends"
)

// apiError is the JSON body of every error answer.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// fail writes a JSON error with the given status.
func fail(c echo.Context, status int, code, msg string) error {
	return c.JSON(status, apiError{Error: msg, Code: code})
}

// backendFailure answers a request that could not be signed because of the
// backend: 429 when it throttles, 503 otherwise, always with Retry-After.
// The request is refused: nothing unsigned is ever returned.
func backendFailure(c echo.Context, err error) error {
	status, retry, code, msg := backendRefusal(err)
	c.Response().Header().Set("Retry-After", strconv.Itoa(retry))
	return fail(c, status, code, msg)
}

// backendRefusal is the answer to a backend error: 429 and retry in 1 s when
// it throttles, else 503 and retry in 5 s, with a code naming the kind.
func backendRefusal(err error) (status, retryAfter int, code, msg string) {
	kind := backends.Kind(err)
	status, retryAfter = http.StatusServiceUnavailable, 5
	if errors.Is(err, backends.ErrThrottled) {
		status, retryAfter = http.StatusTooManyRequests, 1
	}
	return status, retryAfter, "backend_" + kind, "the signing backend could not sign now (" + kind + "); retry later"
}

// errorHandler renders echo's own errors (404, 405, …) in the JSON form.
func errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, msg := http.StatusInternalServerError, "internal error"
	var he *echo.HTTPError
	if errors.As(err, &he) {
		status = he.Code
		if m, ok := he.Message.(string); ok {
			msg = m
		} else {
			msg = http.StatusText(status)
		}
	}
	code := map[int]string{404: "not_found", 405: "method_not_allowed", 413: "too_large"}[status]
	if code == "" {
		code = "error"
	}
	_ = fail(c, status, code, msg)
}
