// Package echoverify is the echo v4 adapter of the kmsgate assertion
// verifier (module github.com/kmsgate/kmsgate/jwks/verify); it is a module
// of its own so that net/http apps using the verifier never link echo.
package echoverify

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/kmsgate/kmsgate/jwks/verify"
)

// Middleware verifies the assertion header with v and puts the claims in
// the request's context, read with verify.ClaimsFromContext(
// c.Request().Context()). A rejected request ends with an *echo.HTTPError
// 401 whose message is {"error": …, "code": …}, for the application's error
// handler.
func Middleware(v *verify.Verifier) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := c.Request()
			claims, rej := v.CheckRequest(r)
			if rej != nil {
				c.Response().Header().Set("Cache-Control", "no-store")
				return echo.NewHTTPError(http.StatusUnauthorized, *rej)
			}
			c.SetRequest(r.WithContext(verify.NewContext(r.Context(), claims)))
			return next(c)
		}
	}
}
