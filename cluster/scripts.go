package cluster

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// keys builds the Redis keys of one cluster. Every key starts with
// relayq:{name}: — the braces are a Redis Cluster hash tag, so that all of
// a cluster's keys live in one slot and a script may touch several.
type keys struct{ prefix string }

func (k keys) leases(dest string) string { return k.prefix + "dest:" + dest + ":leases" }
func (k keys) cap(dest string) string    { return k.prefix + "dest:" + dest + ":cap" }
func (k keys) rate(dest string) string   { return k.prefix + "dest:" + dest + ":rate" }
func (k keys) learnedRate(dest string) string {
	return k.prefix + "dest:" + dest + ":learned_rate"
}
func (k keys) cooldown(host string) string {
	return k.prefix + "host:" + host + ":cooldown"
}
func (k keys) nodes() string { return k.prefix + "nodes" }

// acquireScript takes a connection lease when the destination is under its
// cap. Leases are members of a sorted set scored by their expiry (ms); the
// expired ones are pruned before counting (as KumoMTA does), so a dead
// node's leases stop counting after their TTL. The cap is the caller's,
// lowered to the learned cap when one is published.
//
// KEYS[1] leases, KEYS[2] learned cap. ARGV: now ms, expiry ms, cap,
// member, key TTL ms. Returns {granted 0|1, leases held, cap applied}.
var acquireScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local cap = tonumber(ARGV[3])
local learned = tonumber(redis.call('GET', KEYS[2]) or '0')
if learned > 0 and learned < cap then cap = learned end
local n = redis.call('ZCARD', KEYS[1])
if n >= cap then return {0, n, cap} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, n + 1, cap}
`)

// gcraScript is a generic cell rate algorithm limiter shared by all nodes:
// the key holds the theoretical arrival time (TAT, µs) of the next
// message. A message is allowed when now >= TAT - tolerance; it then
// pushes TAT one interval further. Nothing is consumed when it is refused.
//
// KEYS[1] TAT. ARGV: now µs, interval µs, burst (messages that may go at
// once, >= 1). Returns 0 (allowed) or the µs to wait.
var gcraScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = interval * (tonumber(ARGV[3]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1000)
return 0
`)

func ms(t time.Time) int64 { return t.UnixMilli() }
