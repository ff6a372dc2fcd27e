package smarthost

import (
	"fmt"
	"testing"
	"time"

	"relayq/config"
	"relayq/internal/sink"
)

// TestSlowDestinationDoesNotHoldUpTheOthers: a destination that takes one
// connection and then hangs in DATA has 30 messages due before one for a
// healthy destination. With MaxConns 4 the healthy one is delivered while
// the slow one's first message is still stuck: the slow destination's
// other messages wait in its line, not in slots of MaxConns.
func TestSlowDestinationDoesNotHoldUpTheOthers(t *testing.T) {
	release, stuck := make(chan struct{}), make(chan struct{}, 1)
	slow := startSink(t, sink.Options{MaxConns: 1, OnData: func(*sink.Message) error {
		select {
		case stuck <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-time.After(20 * time.Second):
		}
		return nil
	}})
	defer close(release) // before the sink closes (cleanups run after)
	healthy := startSink(t, sink.Options{})
	router := smarthostRouter([]string{healthy.Addr()}, config.Route{Domains: []string{"slow.invalid"}, Via: "smarthost", Hosts: []string{slow.Addr()}, TLS: config.TLSNone})
	h := pausedHarness(t, nil, router, func(w *Worker) {
		w.MaxConns, w.MaxConnsPerDest = 4, 4
	})
	for i := range 30 {
		h.put("a@src.invalid", fmt.Sprintf("r%d@slow.invalid", i))
	}
	h.start()
	select {
	case <-stuck:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow destination never got a message")
	}
	id := h.put("a@src.invalid", "b@healthy.invalid")
	waitCount(t, healthy, 1, 10*time.Second)
	h.waitGone(id)
	if n := slow.Count(); n != 0 {
		t.Fatalf("%d messages completed at the stuck destination", n)
	}
}
