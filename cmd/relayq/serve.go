package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"relayq/config"
	"relayq/internal/dkimsign"
	"relayq/internal/server"
)

func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "TOML config `FILE` (default: the embedded defaults)", EnvVars: []string{"RELAYQ_CONFIG"}}
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the relay: accept mail over SMTP, queue it, deliver it",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "listen", Usage: "relay listener `ADDRESS`, replacing the config's listeners"},
			&cli.StringFlag{Name: "data-dir", Usage: "queue `DIR`"},
			&cli.StringFlag{Name: "smarthost", Usage: "deliver everything through `HOST:PORT[,HOST:PORT…]`"},
			&cli.StringFlag{Name: "smarthost-tls", Usage: "smart host TLS: none | opportunistic | starttls | implicit"},
			&cli.StringFlag{Name: "admin", Usage: "admin HTTP `ADDRESS`"},
			&cli.StringFlag{Name: "log-format", Usage: "auto | json | console"},
			&cli.StringFlag{Name: "log-level", Usage: "trace | debug | info | warn | error"},
		},
		Action: serve,
	}
}

// loadConfig reads --config (or the defaults) and applies the flags of
// serve that override it.
func loadConfig(c *cli.Context) (*config.Config, error) {
	cfg := config.Default()
	if path := c.String("config"); path != "" {
		var err error
		if cfg, err = config.Load(path); err != nil {
			return nil, err
		}
	}
	if v := c.String("listen"); v != "" {
		cfg.Listeners = []config.Listener{{Address: v, Mode: "relay"}}
	}
	if v := c.String("data-dir"); v != "" {
		cfg.DataDir = v
	}
	if v := c.String("smarthost"); v != "" {
		cfg.Delivery.Smarthost.Hosts = strings.Split(v, ",")
	}
	if v := c.String("smarthost-tls"); v != "" {
		cfg.Delivery.Smarthost.TLS = v
	}
	if v := c.String("admin"); v != "" {
		cfg.Admin.Address = v
	}
	if v := c.String("log-format"); v != "" {
		cfg.Log.Format = v
	}
	if v := c.String("log-level"); v != "" {
		cfg.Log.Level = v
	}
	return cfg, cfg.Validate()
}

func serve(c *cli.Context) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return cli.Exit(fmt.Sprintf("config: %v", err), 2)
	}
	log, logs, err := newLogger(cfg.Log, os.Stderr)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	defer logs.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return server.Run(ctx, cfg, log, serverOptions(func() (*config.Config, error) { return loadConfig(c) }))
}

// serverOptions are the running instance's options: this binary's version,
// the maildrop pickup's SMTP submitter, and load for reloads.
func serverOptions(load func() (*config.Config, error)) server.Options {
	return server.Options{Version: version, Submitter: pickupSubmitter, Load: load}
}

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "configuration tools",
		Subcommands: []*cli.Command{{
			Name:  "check",
			Usage: "load and validate a config file; print the problems",
			Flags: []cli.Flag{configFlag()},
			Action: func(c *cli.Context) error {
				path := c.String("config")
				if path == "" && c.Args().Len() > 0 {
					path = c.Args().First()
				}
				if path == "" {
					return cli.Exit("config check: give --config FILE", 2)
				}
				cfg, err := config.Load(path)
				if err != nil {
					return cli.Exit(fmt.Sprintf("%s: %v", path, err), 1)
				}
				if _, err := dkimsign.New(cfg.DKIM, dkimsign.Options{}); err != nil {
					return cli.Exit(fmt.Sprintf("%s: %v", path, err), 1)
				}
				fmt.Printf("%s: ok\n", path)
				return nil
			},
		}},
	}
}
