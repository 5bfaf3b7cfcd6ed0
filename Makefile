# The README's commands: `make run` starts a development gateway, `make test`
# runs every test; `make chaos` and `make soak` are the long fault-injection
# run and soak (their short forms are part of `make test`).
.PHONY: run test bench build chaos soak

build:
	CGO_ENABLED=0 go build -trimpath -buildvcs=auto -o bin/kmsgate ./cmd/kmsgate

run:
	go run ./cmd/kmsgate serve --dev

test:
	./scripts/test.sh

bench:
	./scripts/bench.sh

chaos:
	./scripts/chaos.sh

soak:
	./scripts/soak.sh
