package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"

	"relayq/admin"
	"relayq/cluster"
	"relayq/config"
	"relayq/internal/certs"
	"relayq/internal/dkimsign"
	"relayq/pressure"
	"relayq/queue"
	"relayq/relay"
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
	log, logs, err := newLogger(cfg.Log, os.Stderr)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	defer logs.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, cfg, log, func() (*config.Config, error) { return loadConfig(c) })
}

// run starts everything of cfg and blocks until ctx is done, then stops.
// SIGHUP reloads the configuration through load.
func run(ctx context.Context, cfg *config.Config, log zerolog.Logger, load func() (*config.Config, error)) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // before start: an early HUP must not kill us
	defer signal.Stop(hup)
	in, err := start(cfg, log)
	if err != nil {
		return err
	}
	in.setLoader(load)
	for {
		select {
		case <-ctx.Done():
			return in.stop()
		case <-hup:
			log.Info().Msg("SIGHUP: reloading the configuration")
			_ = in.reload() // a rejected file is logged; the running config stays
		}
	}
}

// instance is a running relayq: listeners, relay server, delivery worker
// and the queue under them.
type instance struct {
	log   zerolog.Logger
	store *queue.Store
	srv   *relay.Server
	// pressure is the back-pressure monitor, nil with back pressure off
	// at start; stopPressure ends its sampling.
	pressure     *pressure.Monitor
	stopPressure func()
	listeners    []net.Listener
	stopWorker   context.CancelFunc
	certs        *certs.File        // the listeners' certificate; nil without [tls]
	stopCerts    context.CancelFunc // ends the certificate's file watch
	workerDone   chan struct{}
	// cluster shares destination limits with other nodes; nil without
	// [cluster] (cluster.go).
	cluster *cluster.Client
	serving      errgroup.Group
	// stopPickupFn ends the maildrop pickup (sendmail_submit.go); nil
	// when none runs.
	stopPickupFn func()

	// The operator side (ops.go): admin server, metrics, reload.
	adminLn   net.Listener
	admin     *admin.Server
	adminDone chan error
	metrics   *admin.Metrics
	events    *admin.Events
	reloadMu  sync.Mutex
	cfg       *config.Config
	load      func() (*config.Config, error)
	reloaders []func(*config.Config)
}

// start opens the queue, binds every listener and starts serving and
// delivering. On error everything already opened is closed again.
func start(cfg *config.Config, log zerolog.Logger) (_ *instance, err error) {
	in := &instance{log: log, workerDone: make(chan struct{}), cfg: cfg,
		metrics: admin.NewMetrics(), events: admin.NewEvents(admin.DefaultEvents)}
	signer, err := dkimSigner(cfg) // a key that does not load stops the start (dkim.go)
	if err != nil {
		return nil, err
	}
	stalls := pressure.NewStallWatch() // the queue's write stalls are a back-pressure input
	if in.store, err = queue.Open(cfg.DataDir, queueOptions(cfg, stalls, log)); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			for _, l := range in.listeners {
				l.Close()
			}
			if in.adminLn != nil {
				in.adminLn.Close()
			}
			if in.stopCerts != nil {
				in.stopCerts()
			}
			in.closeCluster()
			in.store.Close()
		}
	}()
	log.Info().Str("data_dir", cfg.DataDir).Msg("queue opened")
	go func(store *queue.Store) {
		<-store.Counted()
		log.Info().Int64("queued", store.Messages()).Int64("bytes", store.Bytes()).Msg("queue counted")
	}(in.store)
	// No TCP keepalive on SMTP connections: go-smtp's read timeout ends an
	// idle or dead client, and the four setsockopt calls keepalive costs
	// each accepted connection are a visible share of a short session.
	smtpListen := net.ListenConfig{KeepAlive: -1}
	for _, lc := range cfg.Listeners {
		l, err := smtpListen.Listen(context.Background(), "tcp", lc.Address)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", lc.Address, err)
		}
		in.listeners = append(in.listeners, l)
	}
	if err := in.listenAdmin(cfg.Admin); err != nil {
		return nil, err
	}
	if err := prepareMaildrop(cfg); err != nil {
		return nil, err
	}
	resolver, err := resolverFor(cfg.Delivery)
	if err != nil {
		return nil, err
	}

	if cfg.TLS.Enabled() {
		if in.certs, err = certs.Load(cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			return nil, err
		}
		in.watchCerts(log)
	}
	in.pressure = newMonitor(cfg, in.store, stalls, log)
	relayCfg := relayConfig(cfg, in.certs)
	if in.pressure != nil {
		relayCfg.Pressure = in.pressure
	}
	relayCfg.Accepted = in.accepted
	relayCfg.Signer = signer
	router := smarthost.NewConfigRouter(cfg.Delivery, resolver)
	in.onReload(func(c *config.Config) { router.Set(c.Delivery) })
	worker := &smarthost.Worker{
		Queue:  in.store,
		State:  in.store, // learned destination caps survive restarts
		Router: router,
		// Smart-host and route host names resolve through dns_servers too;
		// MX hosts come as addresses from the router.
		Dialer:          &net.Dialer{Timeout: 30 * time.Second, Resolver: resolver},
		Hostname:        cfg.Hostname,
		Backoff:         backoffOf(cfg.Retry),
		Lifetime:        cfg.Retry.MaxQueueLifetime.Std(),
		DelayWarning:    cfg.Retry.DelayWarning.Std(), // 0: no delay DSNs
		MaxConns:        cfg.Delivery.MaxConnections,
		MaxConnsPerDest: cfg.Delivery.MaxConnectionsPerDestination,
		Grace:           shutdownGrace,
		Log:             log,
		Observe:         in.observe,
	}
	if s, ok := signer.(smarthost.Signer); ok { // nil without [[dkim]]
		worker.Signer = s // signs mail whose From: a route rewrote
	}
	if err := in.openCluster(cfg.Cluster, worker); err != nil {
		return nil, err
	}
	in.reloadLive(worker)
	if in.pressure != nil {
		in.stopPressure = in.pressure.Start() // the level is known before the first client
	}
	in.srv = relay.New(relayCfg, plannedQueue{in.store, worker}, log)

	var workerCtx context.Context
	workerCtx, in.stopWorker = context.WithCancel(context.Background())
	go func() { defer close(in.workerDone); worker.Run(workerCtx) }()
	for i, l := range in.listeners {
		log.Info().Str("address", l.Addr().String()).Str("mode", cfg.Listeners[i].Mode).Msg("listening")
		in.serving.Go(func() error {
			lc := relay.ListenerConfig{Mode: relay.Mode(cfg.Listeners[i].Mode), AllowInsecureAuth: cfg.Listeners[i].AllowInsecureAuth}
			if err := in.srv.Serve(l, lc); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, smtp.ErrServerClosed) {
				return fmt.Errorf("listener %s: %w", l.Addr(), err)
			}
			return nil
		})
	}
	in.serveAdmin(cfg, admin.Options{
		Queue:        flushingQueue{in.store, worker},
		BackPressure: pressureSource{in.pressure},
		Destinations: destinationSource{worker},
		RateLimits:   rateSource{in.srv},
		Cluster:      in.clusterSource(),
	})
	in.startPickup(cfg)
	return in, nil
}

// queueOptions are the queue's options for cfg: it keeps
// config.DiskReserve free on its volume, and reclaims the space of
// delivered mail at once while free space is below reclaimBelow.
func queueOptions(cfg *config.Config, stalls *pressure.StallWatch, log zerolog.Logger) queue.Options {
	return queue.Options{Log: log, Events: stalls,
		Reserve: int64(config.DiskReserve), ReclaimBelow: reclaimBelow(cfg.BackPressure)}
}

// reclaimBelow is the free space under which the queue reclaims the space
// of delivered mail: back pressure's larger free_disk threshold, or with
// back pressure off 0 (the queue's own default, 4 times the reserve).
func reclaimBelow(bp config.BackPressure) int64 {
	if !bp.Enabled {
		return 0
	}
	return int64(max(bp.FreeDiskMedium, bp.FreeDiskHigh))
}

// relayConfig builds the inbound side's configuration from cfg: the TLS
// certificate (cert, nil without [tls]), the AUTH users and the limits.
func relayConfig(cfg *config.Config, cert *certs.File) relay.Config {
	rc := relay.Config{
		Policy:         relayPolicy(cfg), // what a reload can change: ops.go
		Hostname:       cfg.Hostname,
		MaxMessageSize: int64(cfg.Limits.MaxMessageSize),
	}
	if cert != nil {
		rc.TLS = cert.ServerConfig() // reloaded on SIGHUP and when the files change
	}
	return rc
}

// newMonitor is the back-pressure monitor of cfg, nil when back pressure
// is off: it reads the queue's size, its volume's free space and the
// queue's write stalls.
func newMonitor(cfg *config.Config, store *queue.Store, stalls *pressure.StallWatch, log zerolog.Logger) *pressure.Monitor {
	bp := cfg.BackPressure
	if !bp.Enabled {
		return nil
	}
	th := thresholdsOf(bp)
	return pressure.NewMonitor(pressure.Config{
		FreeDiskMedium:      th.FreeDiskMedium,
		FreeDiskHigh:        th.FreeDiskHigh,
		QueueMessagesMedium: th.QueueMessagesMedium,
		QueueMessagesHigh:   th.QueueMessagesHigh,
		MemoryMedium:        th.MemoryMedium,
		MemoryHigh:          th.MemoryHigh,
		DataDir:             cfg.DataDir,
		Queue:               store,
		Stalls:              stalls,
		Written:             store.Written,
	}, log)
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
	in.stopPickup() // it submits through the listeners
	if err := in.stopAdmin(ctx); err != nil {
		in.log.Warn().Err(err).Msg("stopping the admin server")
	}
	if err := in.srv.Shutdown(ctx); err != nil {
		in.log.Warn().Err(err).Msg("SMTP sessions still open at shutdown")
	}
	if in.stopPressure != nil {
		in.stopPressure()
	}
	err := in.serving.Wait()
	if in.stopCerts != nil {
		in.stopCerts()
	}
	in.stopWorker()
	<-in.workerDone
	in.closeCluster() // after the worker: its connections gave their leases back
	in.log.Info().Int64("queued", in.store.Messages()).Msg("stopped")
	return errors.Join(err, in.store.Close())
}

// resolverFor returns a resolver that asks delivery.dns_servers in turn, or
// nil (the system resolver) when none are configured (an operator's "use
// these DNS servers"). Go's
// resolver dials once per try of a query, so each try goes to the next
// server: one that does not answer is passed over when the query is tried
// again (resolv.conf's attempts, 2 by default).
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
				addr := servers[int(next.Add(1)-1)%len(servers)]
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
