# The README's commands: `make run` starts a development gateway, `make test`
# runs every test.
.PHONY: run test bench build

build:
	CGO_ENABLED=0 go build -trimpath -buildvcs=auto -o bin/kmsgate ./cmd/kmsgate

run:
	go run ./cmd/kmsgate serve --dev

test:
	./scripts/test.sh

bench:
	./scripts/bench.sh
