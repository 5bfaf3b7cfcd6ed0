package front

import (
	"net/http"
	"net/http/pprof"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kmsgate/kmsgate/gateway/core"
)

// Admin returns the admin port's handler: GET /metrics (Prometheus),
// /healthz and /readyz, and with withPprof the runtime profiles under
// /debug/pprof/. It is meant for a loopback or pod-internal address, never
// the public port.
func Admin(c *core.Core, withPprof bool) http.Handler {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = func(err error, ec echo.Context) {
		if ec.Response().Committed {
			return
		}
		status := http.StatusInternalServerError
		if he, ok := err.(*echo.HTTPError); ok {
			status = he.Code
		}
		_ = ec.JSONBlob(status, core.ErrorJSON("not_found", http.StatusText(status)))
	}
	answer := func(fill func(*core.Answer)) echo.HandlerFunc {
		return func(ec echo.Context) error {
			var a core.Answer
			fill(&a)
			writeStd(ec.Response(), &a)
			return nil
		}
	}
	e.GET("/healthz", answer(c.Health))
	e.GET("/readyz", answer(c.Ready))
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(c.Metrics().Registry, promhttp.HandlerOpts{})))
	if withPprof {
		e.GET("/debug/pprof/", echo.WrapHandler(http.HandlerFunc(pprof.Index)))
		e.GET("/debug/pprof/cmdline", echo.WrapHandler(http.HandlerFunc(pprof.Cmdline)))
		e.GET("/debug/pprof/profile", echo.WrapHandler(http.HandlerFunc(pprof.Profile)))
		e.GET("/debug/pprof/symbol", echo.WrapHandler(http.HandlerFunc(pprof.Symbol)))
		e.GET("/debug/pprof/trace", echo.WrapHandler(http.HandlerFunc(pprof.Trace)))
		e.GET("/debug/pprof/:name", func(ec echo.Context) error {
			pprof.Handler(ec.Param("name")).ServeHTTP(ec.Response(), ec.Request())
			return nil
		})
	}
	return e
}
