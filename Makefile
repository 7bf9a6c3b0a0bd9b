# The README's commands. `make test` is what CI runs.
GOFLAGS ?= -buildvcs=false
export GOFLAGS

.PHONY: test test-short lint bench build run

## test: every test with the race detector, end-to-end crash tests included
test:
	go test -race -count=1 ./...

## test-short: unit tests only (skips nothing in CI; for a quick loop)
test-short:
	go test -count=1 $$(go list ./... | grep -v /e2e)

GOLANGCI_LINT ?= go run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0

## lint: vet, golangci-lint (staticcheck, errcheck, … and the dependency rules
## of .golangci.yaml) and the Dockerfile linter
lint:
	go vet ./...
	$(GOLANGCI_LINT) run ./...
	npx --yes dockerfilelint@1.8.0 Dockerfile

## bench: the engine benchmarks quoted in the README
bench:
	go test -run '^$$' -bench . -benchtime 20x ./worker

## build: the static binary, as the Dockerfile builds it
build:
	CGO_ENABLED=0 go build -trimpath -o bin/worker ./cmd/worker

## run: one full slate on the embedded default
run:
	go run ./cmd/worker run --date 2025-01-15
