package cluster

import "time"

// local holds the limits a node keeps on its own while Redis is
// unreachable (leases are counted in Client.mu.leases). It is guarded by
// Client.mu.
type local struct {
	tat       map[string]time.Time // GCRA's theoretical arrival time per destination
	cooldowns map[string]time.Time // by host
}

func newLocal() local {
	return local{tat: map[string]time.Time{}, cooldowns: map[string]time.Time{}}
}

// allow is gcraScript in Go: 0 when a message may go now (and then it is
// counted), else how long to wait.
func (l *local) allow(dest string, now time.Time, interval time.Duration, burst int) time.Duration {
	tat := l.tat[dest]
	if tat.Before(now) {
		tat = now
	}
	tolerance := interval * time.Duration(burst-1)
	if wait := tat.Add(-tolerance).Sub(now); wait > 0 {
		return wait
	}
	l.tat[dest] = tat.Add(interval)
	return 0
}

func (l *local) setCooldown(host string, now, until time.Time) {
	if !until.After(now) {
		delete(l.cooldowns, host)
		return
	}
	l.cooldowns[host] = until
}

func (l *local) cooldown(host string) time.Time {
	return l.cooldowns[host]
}

// prune forgets what has run out by now, so that the maps hold only the
// destinations and hosts limited at the moment.
func (l *local) prune(now time.Time) {
	for dest, tat := range l.tat {
		if tat.Before(now) {
			delete(l.tat, dest)
		}
	}
	for host, until := range l.cooldowns {
		if !until.After(now) {
			delete(l.cooldowns, host)
		}
	}
}
