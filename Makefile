# The README's commands: `make run` starts a development gateway, `make test`
# runs every test (with each fuzz target for 5 s, and the short forms of the
# fault-injection run and the soak); `make fuzz` runs each fuzz target for
# FUZZTIME (default 1m; `make fuzz FUZZTIME=10m`); `make chaos` and
# `make soak` are the long fault-injection run and soak.
.PHONY: run test bench build build-pkcs11 fuzz chaos soak

FUZZTIME ?= 1m

build:
	CGO_ENABLED=0 go build -trimpath -buildvcs=auto -o bin/kmsgate ./cmd/kmsgate

# The same binary with the PKCS#11 backend, which needs cgo (and gcc) to
# load an HSM vendor's library: dynamically linked against glibc.
build-pkcs11:
	CGO_ENABLED=1 go build -tags pkcs11 -trimpath -buildvcs=auto -o bin/kmsgate-pkcs11 ./cmd/kmsgate

run:
	go run ./cmd/kmsgate serve --dev

test:
	./scripts/test.sh

bench:
	./scripts/bench.sh

fuzz:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

chaos:
	./scripts/chaos.sh

soak:
	./scripts/soak.sh
