package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"relayq/admin"
	"relayq/cluster"
	"relayq/config"
	"relayq/internal/certs"
	"relayq/internal/maildrop"
	"relayq/pressure"
	"relayq/queue"
	"relayq/relay"
	"relayq/smarthost"
)

// shutdownGrace bounds how long a stop waits for SMTP transactions and
// deliveries in flight.
const shutdownGrace = 20 * time.Second

// Options are what the running instance takes besides its configuration.
type Options struct {
	// Version is the version the admin API and status page show.
	Version string
	// Submitter returns how the maildrop pickup hands a message to addr,
	// the instance's own relay listener, greeting with hello; nil: no
	// pickup (mail left by sendmail waits in the maildrop).
	Submitter func(addr, hello string) maildrop.Submitter
	// Load re-reads the configuration at a reload (SIGHUP, POST
	// /api/reload): the file and flags the instance started with; nil: no
	// reload until SetLoader.
	Load func() (*config.Config, error)
}

// Run starts everything of cfg and blocks until ctx is done, then stops.
// SIGHUP reloads the configuration through opts.Load.
func Run(ctx context.Context, cfg *config.Config, log zerolog.Logger, opts Options) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // before start: an early HUP must not kill us
	defer signal.Stop(hup)
	in, err := Start(cfg, log, opts)
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return in.Stop()
		case <-hup:
			log.Info().Msg("SIGHUP: reloading the configuration")
			_ = in.Reload() // a rejected file is logged; the running config stays
		}
	}
}

// Instance is a running relayq: listeners, relay server, delivery worker
// and the queue under them.
type Instance struct {
	log   zerolog.Logger
	opts  Options
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
	serving errgroup.Group
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

// Start opens the queue, binds every listener and starts serving and
// delivering. On error everything already opened is closed again.
func Start(cfg *config.Config, log zerolog.Logger, opts Options) (_ *Instance, err error) {
	in := &Instance{log: log, opts: opts, load: opts.Load, workerDone: make(chan struct{}), cfg: cfg,
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
	if err := in.listen(cfg.Listeners); err != nil {
		return nil, err
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
	router.Log = log
	in.onReload(func(c *config.Config) { router.Set(c.Delivery) })
	worker := in.newWorker(cfg, router, resolver, signer)
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
	in.serve(cfg.Listeners)
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

// listen binds every SMTP listener. No TCP keepalive on SMTP connections:
// go-smtp's read timeout ends an idle or dead client, and the four
// setsockopt calls keepalive costs each accepted connection are a visible
// share of a short session.
func (in *Instance) listen(listeners []config.Listener) error {
	smtpListen := net.ListenConfig{KeepAlive: -1}
	for _, lc := range listeners {
		l, err := smtpListen.Listen(context.Background(), "tcp", lc.Address)
		if err != nil {
			return fmt.Errorf("listener %s: %w", lc.Address, err)
		}
		in.listeners = append(in.listeners, l)
	}
	return nil
}

// serve serves SMTP on every bound listener, each as its [[listener]]
// entry says, until Stop.
func (in *Instance) serve(listeners []config.Listener) {
	for i, l := range in.listeners {
		in.log.Info().Str("address", l.Addr().String()).Str("mode", listeners[i].Mode).Msg("listening")
		in.serving.Go(func() error {
			lc := relay.ListenerConfig{Mode: relay.Mode(listeners[i].Mode), AllowInsecureAuth: listeners[i].AllowInsecureAuth}
			if err := in.srv.Serve(l, lc); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, smtp.ErrServerClosed) {
				return fmt.Errorf("listener %s: %w", l.Addr(), err)
			}
			return nil
		})
	}
}

// newWorker is the delivery worker of cfg, routing with router; smart-host
// and route host names resolve through resolver (dns_servers) too, MX
// hosts come as addresses from the router.
func (in *Instance) newWorker(cfg *config.Config, router smarthost.Router, resolver *net.Resolver, signer relay.Signer) *smarthost.Worker {
	worker := &smarthost.Worker{
		Queue:           in.store,
		State:           in.store, // learned destination caps survive restarts
		Router:          router,
		Dialer:          &net.Dialer{Timeout: 30 * time.Second, Resolver: resolver},
		Hostname:        cfg.Hostname,
		Backoff:         backoffOf(cfg.Retry),
		Lifetime:        cfg.Retry.MaxQueueLifetime.Std(),
		DelayWarning:    cfg.Retry.DelayWarning.Std(), // 0: no delay DSNs
		MaxConns:        cfg.Delivery.MaxConnections,
		MaxConnsPerDest: cfg.Delivery.MaxConnectionsPerDestination,
		Grace:           shutdownGrace,
		Log:             in.log,
		Observe:         in.observe,
	}
	if s, ok := signer.(smarthost.Signer); ok { // nil without [[dkim]]
		worker.Signer = s // signs mail whose From: a route rewrote
	}
	return worker
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

// Store is the instance's queue.
func (in *Instance) Store() *queue.Store { return in.store }

// Pressure is the instance's back-pressure monitor, nil with back pressure
// off at start.
func (in *Instance) Pressure() *pressure.Monitor { return in.pressure }

// Addrs returns the bound listener addresses.
func (in *Instance) Addrs() []string {
	var a []string
	for _, l := range in.listeners {
		a = append(a, l.Addr().String())
	}
	return a
}

// Stop stops intake, lets transactions and deliveries in flight finish
// (bounded) and closes the queue last: Pebble panics on use after Close.
func (in *Instance) Stop() error {
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
