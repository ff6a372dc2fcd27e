# relayq — the two commands a newcomer needs are `make run` and `make test`.
export CGO_ENABLED := 0
GO ?= go
BIN := bin/relayq
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build run test race vet fuzz clean

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/relayq

## run: build and start relayq on its embedded defaults (127.0.0.1:2525, ./relayq-data)
run: build
	./$(BIN) serve

## test: every test (go vet first); installs nothing, needs only Go and the module proxy
test:
	$(GO) mod download
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 8m ./...

## race: every test under the race detector (needs cgo and a C compiler: CGO_ENABLED=1, gcc)
race:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m ./...

## fuzz: run each fuzz target for a while (FUZZTIME=30s)
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParseReply$$' -fuzztime=$(FUZZTIME) ./retry/
	$(GO) test -run='^$$' -fuzz='^FuzzExplainText$$' -fuzztime=$(FUZZTIME) ./retry/
	$(GO) test -run='^$$' -fuzz='^FuzzSession$$' -fuzztime=$(FUZZTIME) ./relay/
	$(GO) test -run='^$$' -fuzz='^FuzzBodyReader$$' -fuzztime=$(FUZZTIME) ./relay/
	$(GO) test -run='^$$' -fuzz='^FuzzFastData$$' -fuzztime=$(FUZZTIME) ./relay/
	$(GO) test -run='^$$' -fuzz='^FuzzHeaderScan$$' -fuzztime=$(FUZZTIME) ./relay/
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeRecord$$' -fuzztime=$(FUZZTIME) ./queue/
	$(GO) test -run='^$$' -fuzz='^FuzzDotStuffer$$' -fuzztime=$(FUZZTIME) ./smarthost/smtpclient/
	$(GO) test -run='^$$' -fuzz='^FuzzOpen$$' -fuzztime=$(FUZZTIME) ./internal/maildrop/
	$(GO) test -run='^$$' -fuzz='^FuzzReadReply$$' -fuzztime=$(FUZZTIME) ./smarthost/smtpclient/

clean:
	rm -rf bin

## browser-test: load the status page of a running relayq in headless chromium
## (installed with apt-get when missing), check it and save docs/status-page.png
.PHONY: browser-test
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-test:
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	RELAYQ_SCREENSHOT=$(CURDIR)/docs/status-page.png $(GO) test -count=1 -run '^TestStatusPageInChromium$$' -v ./cmd/relayq/

## bench: relayq vs a private Postfix, 1 KiB and 100 KiB, in one run (installs postfix from Debian if missing; ROUNDS=5)
.PHONY: bench
bench:
	./bench/run.sh

## soak: the SIGKILL crash test with 20 kill cycles instead of the 3 of `make test`
.PHONY: soak
soak:
	RELAYQ_SOAK_CYCLES=20 $(GO) test -count=1 -timeout 20m -run '^TestSIGKILLUnderLoadLosesNoAcknowledgedMessage$$' -v ./cmd/relayq/
