package jwks

import (
	"net/http"

	"github.com/labstack/echo/v4"
)

// EchoMiddleware is Middleware for echo v4: it verifies the assertion header
// and puts the claims in the request's context, read with
// ClaimsFromContext(c.Request().Context()). A rejected request ends with an
// *echo.HTTPError 401 whose message is {"error": …, "code": …}, for the
// application's error handler.
func (v *Verifier) EchoMiddleware() echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := c.Request()
			claims, rej, err := v.check(r)
			if rej != nil {
				v.logRejection(r, rej, err)
				c.Response().Header().Set("Cache-Control", "no-store")
				return echo.NewHTTPError(http.StatusUnauthorized, *rej).SetInternal(err)
			}
			c.SetRequest(r.WithContext(NewContext(r.Context(), claims)))
			return next(c)
		}
	}
}
