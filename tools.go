//go:build tools

// Package tools pins modules that are about to be used, so `go mod tidy`
// keeps them while the packages using them are written.
package tools

import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/emersion/go-sasl"
	_ "github.com/emersion/go-smtp"
	_ "github.com/foxcpp/go-mockdns"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/rs/zerolog"
	_ "github.com/urfave/cli/v2"
	_ "golang.org/x/crypto/bcrypt"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/time/rate"
)
