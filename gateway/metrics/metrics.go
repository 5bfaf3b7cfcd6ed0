// Package metrics holds the gateway's Prometheus metrics, on a registry of
// their own served by the admin port.
package metrics

import (
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kmsgate/kmsgate/backends"
	"github.com/kmsgate/kmsgate/jwks"
)

// Metrics holds the gateway's Prometheus metrics on a registry of its own.
// Create it before the keyring so its OnSign and OnRefresh hooks can be
// passed to jwks.Config.
type Metrics struct {
	Registry *prometheus.Registry

	requests         *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	sign             *prometheus.HistogramVec
	backendErrors    *prometheus.CounterVec
	refreshes        *prometheus.CounterVec
	jwksRequests     prometheus.Counter
	jwksNotModified  prometheus.Counter
	assertionHits    prometheus.Counter
	assertionMisses  prometheus.Counter
	assertionRotated prometheus.Counter
	policyDecisions  *prometheus.CounterVec

	routes sync.Map // routeKey -> routeMetrics, so hot paths skip the label lookups
}

type routeKey struct {
	endpoint string
	status   int
}

type routeMetrics struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// Request records one answered request by endpoint and status.
func (m *Metrics) Request(endpoint string, status int, took time.Duration) {
	rm := m.route(endpoint, status)
	rm.requests.Inc()
	rm.duration.Observe(took.Seconds())
}

// JWKSRequest counts a request for the key set or discovery document, and
// notModified a 304 answer to one.
func (m *Metrics) JWKSRequest(notModified bool) {
	m.jwksRequests.Inc()
	if notModified {
		m.jwksNotModified.Inc()
	}
}

// AssertionCache counts a hit or a miss of the assertion cache.
func (m *Metrics) AssertionCache(hit bool) {
	if hit {
		m.assertionHits.Inc()
	} else {
		m.assertionMisses.Inc()
	}
}

// AssertionRotated counts a cached assertion not reused because its kid is
// no longer the active one (a rotation or a disabled version).
func (m *Metrics) AssertionRotated() { m.assertionRotated.Inc() }

// PolicyDecisions returns the counters of a route's policy decisions, one
// per decision named, in that order, so that counting one costs no label
// lookup.
func (m *Metrics) PolicyDecisions(route string, decisions []string) []prometheus.Counter {
	out := make([]prometheus.Counter, len(decisions))
	for i, d := range decisions {
		out[i] = m.policyDecisions.WithLabelValues(route, d)
	}
	return out
}

// SetBuildInfo exports kmsgate_build_info{version, commit, date, goversion} 1.
func (m *Metrics) SetBuildInfo(version, commit, date string) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kmsgate_build_info", Help: "The running binary: version, commit and commit date; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "date": date, "goversion": runtime.Version()},
	})
	g.Set(1)
	_ = m.Registry.Register(g)
}

// WatchKeys exports the keyring's published versions and readiness at
// scrape time (kmsgate_key_info, kmsgate_keys_ready).
func (m *Metrics) WatchKeys(kr *jwks.Keyring) error {
	return m.Registry.Register(newKeyStateCollector(kr))
}

// route returns the request counter and latency histogram of an endpoint
// and status.
func (m *Metrics) route(endpoint string, status int) routeMetrics {
	k := routeKey{endpoint, status}
	if v, ok := m.routes.Load(k); ok {
		return v.(routeMetrics)
	}
	code := strconv.Itoa(status)
	r := routeMetrics{requests: m.requests.WithLabelValues(endpoint, code), duration: m.duration.WithLabelValues(endpoint, code)}
	m.routes.Store(k, r)
	return r
}

// New registers the gateway's metrics, plus the Go and process
// collectors, on a new registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsgate_http_requests_total", Help: "HTTP requests by endpoint and status code.",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kmsgate_http_request_duration_seconds", Help: "HTTP request latency by endpoint and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"endpoint", "code"}),
		sign: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kmsgate_sign_duration_seconds", Help: "Backend signing latency by backend and key version (kid).",
			Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"backend", "kid"}),
		backendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsgate_backend_errors_total", Help: "Backend errors by backend, operation and kind (throttled, unavailable, integrity, …).",
		}, []string{"backend", "op", "kind"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsgate_key_refreshes_total", Help: "Key version refreshes by backend and result.",
		}, []string{"backend", "result"}),
		jwksRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsgate_jwks_requests_total", Help: "JWKS and discovery document requests.",
		}),
		jwksNotModified: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsgate_jwks_not_modified_total", Help: "JWKS and discovery requests answered 304 Not Modified.",
		}),
		assertionHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsgate_assertion_cache_hits_total", Help: "Identity assertions served from the cache.",
		}),
		assertionRotated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsgate_assertion_rotation_remints_total", Help: "Cached identity assertions signed anew because their kid was no longer the active one.",
		}),
		assertionMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsgate_assertion_cache_misses_total", Help: "Identity assertions not in the cache (signed, or waiting for a concurrent signature).",
		}),
		policyDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsgate_policy_decisions_total", Help: "Route policy decisions by route and decision (allow, deny, not-allowed).",
		}, []string{"route", "decision"}),
	}
	m.Registry.MustRegister(m.policyDecisions, m.assertionHits, m.assertionMisses, m.assertionRotated, m.requests, m.duration, m.sign, m.backendErrors, m.refreshes, m.jwksRequests, m.jwksNotModified,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// OnSign records one backend signature; it is a jwks.Config.OnSign hook.
func (m *Metrics) OnSign(kind, kid string, took time.Duration, err error) {
	if err != nil {
		m.backendErrors.WithLabelValues(kind, "sign", backends.Kind(err)).Inc()
		return
	}
	m.sign.WithLabelValues(kind, kid).Observe(took.Seconds())
}

// OnRefresh records one refresh of a key URI; it is a jwks.Config.OnRefresh
// hook.
func (m *Metrics) OnRefresh(_, kind string, err error) {
	if err != nil {
		m.refreshes.WithLabelValues(kind, "error").Inc()
		m.backendErrors.WithLabelValues(kind, "list", backends.Kind(err)).Inc()
		return
	}
	m.refreshes.WithLabelValues(kind, "ok").Inc()
}

// keyStateCollector exports one series per published kid with its role and
// state, and whether every key URI has loaded, read from the keyring at
// scrape time.
type keyStateCollector struct {
	keys  *jwks.Keyring
	info  *prometheus.Desc
	ready *prometheus.Desc
}

func newKeyStateCollector(kr *jwks.Keyring) *keyStateCollector {
	return &keyStateCollector{
		keys: kr,
		info: prometheus.NewDesc("kmsgate_key_info", "Published key versions: 1 per kid, with role (active, pending, retiring, published) and state.",
			[]string{"kid", "role", "state", "backend", "uri"}, nil),
		ready: prometheus.NewDesc("kmsgate_keys_ready", "1 once every key URI has loaded at least once.", nil, nil),
	}
}

func (k *keyStateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- k.info
	ch <- k.ready
}

func (k *keyStateCollector) Collect(ch chan<- prometheus.Metric) {
	st := k.keys.State()
	kinds := map[string]string{}
	for _, s := range k.keys.Sources() {
		kinds[s.URI] = s.Backend.Kind()
	}
	for _, key := range st.Plan.Keys {
		ch <- prometheus.MustNewConstMetric(k.info, prometheus.GaugeValue, 1,
			key.KID, string(key.Role), string(key.Version.State), kinds[key.URI], backends.Redact(key.URI))
	}
	ready := 0.0
	if st.Ready {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(k.ready, prometheus.GaugeValue, ready)
}
