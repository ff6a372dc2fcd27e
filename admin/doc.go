// Package admin is relayq's operator interface over HTTP: the queue API that
// `relayq queue …` and `relayq status` talk to, Prometheus metrics, health
// probes and a status page that refreshes itself.
//
// It knows the rest of relayq only through the small interfaces of
// server.go (Queue, BackPressureSource, DestinationSource,
// RateLimitSource, a reload func)
// and is fed events (deferrals, bounces) through Server.Event;
// internal/server adapts the real parts to them.
//
// # Endpoints
//
//	GET  /                          status page (HTML, assets embedded, no CDN)
//	GET  /healthz                   200 while the server serves
//	GET  /readyz                    200, or 503 while back pressure is high
//	GET  /metrics                   Prometheus text format, own registry
//	GET  /api/status                back pressure, queue totals, destinations, recent events
//	GET  /api/queue                 ?domain= &sender= &state= &older_than= &message_id= &after= &limit=
//	GET  /api/queue/{id}            one message
//	GET  /api/queue/{id}/body       the message as stored, header fields and body (text/plain)
//	POST /api/queue/{id}/{action}   action: flush | hold | release | bounce | delete
//	POST /api/queue/{action}        the action on the messages named by id= (repeated),
//	                                or on every message the filter (domain= sender=
//	                                state= older_than= message_id=) selects; all=true when there
//	                                is neither; query string or form body
//	POST /api/reload                re-read the configuration
//
// # Invariants
//
//   - With a token configured, every endpoint but /healthz and /readyz needs
//     it, as "Authorization: Bearer <token>" or as the password of HTTP Basic
//     auth (so a browser can open the status page). Without a token the
//     server only exists on a loopback address (config validation and
//     internal/server refuse anything else), and it then also refuses requests
//     whose Host is not a loopback name (DNS rebinding) and POSTs from
//     another origin (cross-site request forgery from a browser).
//   - An action on a filter never acts on everything by accident: an empty
//     filter needs all=true.
//   - Listing never loads the whole queue: pages of at most MaxPage
//     messages, streamed from the store; actions on a filter walk it page
//     by page. A message's body is streamed from the store chunk by chunk.
//   - Every operator action is logged, one line per message, with the
//     remote address.
package admin
