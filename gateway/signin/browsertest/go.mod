module github.com/kmsgate/kmsgate/gateway/signin/browsertest

go 1.26.8

require (
	github.com/chromedp/cdproto v0.159.0
	github.com/chromedp/chromedp v0.23.0
	github.com/kmsgate/kmsgate/jwks/verify v0.0.0
)

require (
	github.com/go-jose/go-jose/v4 v4.1.9 // indirect
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
)

replace github.com/kmsgate/kmsgate/jwks/verify => ../../../jwks/verify
