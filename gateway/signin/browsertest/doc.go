// Package browsertest holds kmsgate's end-to-end test of browser sign-in
// (the oidc-login identity source): Debian's chromium, driven headless by
// github.com/chromedp/chromedp, opens an app behind a kmsgate binary built
// from this repository, is sent to the test OpenID provider
// (gateway/signin/testop) to sign in, lands on the app, which verifies the
// gateway's assertion with the jwks/verify module; then it signs out, and a
// user the route's policy refuses sees the 403 page.
//
// It is a module of its own so that chromedp never enters the main go.mod.
// scripts/test.d/55-browser.sh installs chromium and runs it.
package browsertest
