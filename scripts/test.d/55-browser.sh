# The browser sign-in test (gateway/signin/browsertest, its own Go module
# with github.com/chromedp/chromedp): Debian's chromium, driven headless,
# signs in through kmsgate at the test OpenID provider of 50-oidc.sh.
if [ -z "${KMSGATE_TEST_CHROMIUM:-}" ]; then
  need_pkg chromium
  export KMSGATE_TEST_CHROMIUM=$(command -v chromium || echo /usr/bin/chromium)
fi
add_module gateway/signin/browsertest
