package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"

	"relayq/config"
	"relayq/queue"
	"relayq/relay"
	"relayq/retry"
	"relayq/smarthost"
)

// shutdownGrace bounds how long a stop waits for SMTP transactions and
// deliveries in flight.
const shutdownGrace = 20 * time.Second

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
	log, err := newLogger(cfg.Log, os.Stderr)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, cfg, log)
}

// run starts everything of cfg and blocks until ctx is done, then stops.
func run(ctx context.Context, cfg *config.Config, log zerolog.Logger) error {
	in, err := start(cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return in.stop()
}

// instance is a running relayq: listeners, relay server, delivery worker
// and the queue under them.
type instance struct {
	log        zerolog.Logger
	store      *queue.Store
	srv        *relay.Server
	listeners  []net.Listener
	stopWorker context.CancelFunc
	workerDone chan struct{}
	serving    errgroup.Group
}

// start opens the queue, binds every listener and starts serving and
// delivering. On error everything already opened is closed again.
func start(cfg *config.Config, log zerolog.Logger) (_ *instance, err error) {
	in := &instance{log: log, workerDone: make(chan struct{})}
	if in.store, err = queue.Open(cfg.DataDir, queue.Options{Log: log}); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			for _, l := range in.listeners {
				l.Close()
			}
			in.store.Close()
		}
	}()
	log.Info().Str("data_dir", cfg.DataDir).Int64("queued", in.store.Messages()).Msg("queue opened")
	for _, lc := range cfg.Listeners {
		l, err := net.Listen("tcp", lc.Address)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", lc.Address, err)
		}
		in.listeners = append(in.listeners, l)
	}
	resolver, err := resolverFor(cfg.Delivery)
	if err != nil {
		return nil, err
	}

	in.srv = relay.New(relay.Config{
		Hostname:        cfg.Hostname,
		AllowedNetworks: cfg.Relay.Networks(),
		MaxMessageSize:  int64(cfg.Limits.MaxMessageSize),
		MaxRecipients:   cfg.Limits.MaxRecipients,
		MaxHops:         cfg.Limits.MaxHops,
	}, in.store, log)
	worker := &smarthost.Worker{
		Queue:    in.store,
		Router:   smarthost.NewConfigRouter(cfg.Delivery, resolver),
		Hostname: cfg.Hostname,
		Backoff: retry.Backoff{
			Min: cfg.Retry.MinBackoff.Std(), Max: cfg.Retry.MaxBackoff.Std(), Jitter: 0.2,
		},
		Lifetime:        cfg.Retry.MaxQueueLifetime.Std(),
		MaxConns:        cfg.Delivery.MaxConnections,
		MaxConnsPerDest: cfg.Delivery.MaxConnectionsPerDestination,
		Grace:           shutdownGrace,
		Log:             log,
	}

	var workerCtx context.Context
	workerCtx, in.stopWorker = context.WithCancel(context.Background())
	go func() { defer close(in.workerDone); worker.Run(workerCtx) }()
	for i, l := range in.listeners {
		log.Info().Str("address", l.Addr().String()).Str("mode", cfg.Listeners[i].Mode).Msg("listening")
		in.serving.Go(func() error {
			if err := in.srv.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, smtp.ErrServerClosed) {
				return fmt.Errorf("listener %s: %w", l.Addr(), err)
			}
			return nil
		})
	}
	return in, nil
}

// addrs returns the bound listener addresses.
func (in *instance) addrs() []string {
	var a []string
	for _, l := range in.listeners {
		a = append(a, l.Addr().String())
	}
	return a
}

// stop stops intake, lets transactions and deliveries in flight finish
// (bounded) and closes the queue last: Pebble panics on use after Close.
func (in *instance) stop() error {
	in.log.Info().Msg("stopping: no new connections; finishing transactions and deliveries in flight")
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := in.srv.Shutdown(ctx); err != nil {
		in.log.Warn().Err(err).Msg("SMTP sessions still open at shutdown")
	}
	err := in.serving.Wait()
	in.stopWorker()
	<-in.workerDone
	in.log.Info().Int64("queued", in.store.Messages()).Msg("stopped")
	return errors.Join(err, in.store.Close())
}

// resolverFor returns a resolver that asks delivery.dns_servers in turn, or
// nil (the system resolver) when none are configured (seed 004).
func resolverFor(d config.Delivery) (*net.Resolver, error) {
	servers := d.DNSServerAddrs()
	if len(servers) == 0 {
		return nil, nil
	}
	var next atomic.Uint32
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var dialer net.Dialer
			var err error
			for range servers {
				addr := servers[int(next.Add(1))%len(servers)]
				var conn net.Conn
				if conn, err = dialer.DialContext(ctx, network, addr); err == nil {
					return conn, nil
				}
			}
			return nil, err
		},
	}, nil
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
				if _, err := config.Load(path); err != nil {
					return cli.Exit(fmt.Sprintf("%s: %v", path, err), 1)
				}
				fmt.Printf("%s: ok\n", path)
				return nil
			},
		}},
	}
}
