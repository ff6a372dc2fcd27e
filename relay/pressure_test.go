package relay

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"relayq/internal/diskspace"
	"relayq/pressure"
)

// fakePressure is a Pressure the test sets; NoRoom takes it to high on
// free_disk, as the monitor does.
type fakePressure struct {
	mu     sync.Mutex
	level  pressure.Level
	res    pressure.Resource
	noRoom int
}

func (f *fakePressure) Level() (pressure.Level, pressure.Resource) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.level, f.res
}

func (f *fakePressure) NoRoom() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.noRoom++
	f.level, f.res = pressure.High, pressure.ResourceFreeDisk
}

func (f *fakePressure) set(l pressure.Level, r pressure.Resource) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.level, f.res = l, r
}

// pressureServer serves a test config under p over loopback, letting
// 127.0.0.1 relay and app1 authenticate in plaintext.
func pressureServer(t *testing.T, p Pressure) string {
	t.Helper()
	cfg := testConfig()
	cfg.Pressure = p
	cfg.Users = testUsers(t)
	_, addr := startListener(t, cfg, &memQueue{}, ListenerConfig{AllowInsecureAuth: true})
	return addr
}

func TestHighPressureRefusesMailFromEveryoneWith452_4_3_1(t *testing.T) {
	p := &fakePressure{}
	addr := pressureServer(t, p)
	p.set(pressure.High, pressure.ResourceQueueMessages)

	r := dialRaw(t, addr, "127.0.0.1") // allowed network
	if msg := r.cmd("MAIL FROM:<s@example.org>", 452); msg != "4.3.1 Insufficient system resources (queue size)" {
		t.Errorf("MAIL at high: 452 %s", msg)
	}
	a := dialRaw(t, addr, "127.0.0.2")
	a.cmd("AUTH PLAIN "+b64(goodPlain), 235)
	a.cmd("MAIL FROM:<s@example.org>", 452) // authenticated too

	p.set(pressure.Normal, "")
	r.cmd("MAIL FROM:<s@example.org>", 250)
}

func TestMediumPressureLetsAllowedNetworksAndAuthenticatedClientsThrough(t *testing.T) {
	p := &fakePressure{}
	addr := pressureServer(t, p)
	p.set(pressure.Medium, pressure.ResourceFreeDisk)
	dialRaw(t, addr, "127.0.0.1").cmd("MAIL FROM:<s@example.org>", 250)
	other := dialRaw(t, addr, "127.0.0.2")
	if msg := other.cmd("MAIL FROM:<s@example.org>", 452); msg != "4.3.1 Insufficient system resources (queue disk space)" {
		t.Errorf("MAIL from elsewhere at medium: 452 %s", msg)
	}
	other.cmd("AUTH PLAIN "+b64(goodPlain), 235)
	other.cmd("MAIL FROM:<s@example.org>", 250)
}

// A Put refused for want of room (the queue's reserve) is the mail system
// being full: 452 4.3.1 naming the queue disk, not 451 4.3.0, and back
// pressure is told (NoRoom), so that the next MAIL is refused before its
// body is sent.
func TestPutRefusedForWantOfRoomAnswers452AndRaisesPressure(t *testing.T) {
	p := &fakePressure{}
	cfg := testConfig()
	cfg.Pressure = p
	q := &memQueue{beforeCommit: func(context.Context) error {
		return fmt.Errorf("%w: 1000 bytes free, 16777216 kept in reserve", diskspace.ErrNoRoom)
	}}
	_, addr := startServer(t, cfg, q)
	r := sendRefusedForWantOfRoom(t, addr)
	if l, res := p.Level(); l != pressure.High || res != pressure.ResourceFreeDisk || p.noRoom != 1 {
		t.Errorf("after a Put refused for want of room the level is %v (%s), NoRoom called %d times; want high (free_disk), once", l, res, p.noRoom)
	}
	r.cmd("MAIL FROM:<s@example.org>", 452)

	p.set(pressure.Normal, "") // a sample read free space again
	q.beforeCommit = nil
	r.cmd("MAIL FROM:<s@example.org>", 250)
}

// Without back pressure the refusal is the same 452 4.3.1.
func TestPutRefusedForWantOfRoomAnswers452WithoutBackPressure(t *testing.T) {
	q := &memQueue{beforeCommit: func(context.Context) error { return diskspace.ErrNoRoom }}
	_, addr := startServer(t, testConfig(), q)
	sendRefusedForWantOfRoom(t, addr)
}

// sendRefusedForWantOfRoom sends a message to addr, whose queue refuses
// it for want of room, and checks the reply to its body.
func sendRefusedForWantOfRoom(t *testing.T, addr string) *rawConn {
	t.Helper()
	r := dialRaw(t, addr, "127.0.0.1")
	r.cmd("MAIL FROM:<s@example.org>", 250)
	r.cmd("RCPT TO:<r@example.net>", 250)
	r.cmd("DATA", 354)
	r.send("Subject: x\r\n\r\nbody\r\n.\r\n")
	if msg := r.expect(452); msg != "4.3.1 Insufficient system resources (queue disk space)" {
		t.Errorf("a Put refused for want of room: 452 %s", msg)
	}
	return r
}
