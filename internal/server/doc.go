// Package server is a running relayq: Start opens the queue, binds the SMTP
// and admin listeners, and starts the relay server, the delivery worker,
// back pressure, the certificate watch, the maildrop pickup and (with
// [cluster]) the cluster client; Stop stops them; Reload applies a new
// configuration to what is running. It also holds the adapters between
// packages that know nothing of each other (relay and smarthost report to
// admin through callbacks and sources: wiring.go; the queue the relay puts
// into plans each message with the worker first: queues.go) and the
// resolver that asks the configured DNS servers. cmd/relayq only reads
// flags and the configuration and calls Run.
//
// Invariants:
//
//   - Start either returns a running instance or an error with everything
//     it had opened closed again; a listener that cannot be bound, a DKIM
//     key that does not load or an open admin API off loopback without a
//     token stop the start.
//   - The back-pressure monitor is sampled before the first listener
//     serves (pressure.Monitor.Start), so the first client is judged by a
//     reading.
//   - Stop ends intake first (the pickup, the admin server, then the SMTP
//     server, letting transactions in flight get their reply, bounded by
//     shutdownGrace), then back pressure, the certificate watch, the
//     worker (deliveries in flight finish), the cluster client, and closes
//     the queue last: Pebble panics on use after Close.
//   - Reload never closes a connection: a file that does not load or
//     validate is refused and the running configuration stays; keys only a
//     restart can apply (restartOnly) are logged at every reload until a
//     restart applies them.
package server
