package main

import (
	"context"

	"relayq/queue"
	"relayq/smarthost"
)

// flushingQueue is the queue as the admin API sees it: an operator's flush
// means "try now", so it also ends the cool-down of every failing host;
// otherwise a flush during an outage would only find the hosts skipped.
type flushingQueue struct {
	*queue.Store
	worker *smarthost.Worker
}

func (q flushingQueue) Flush(ctx context.Context, id queue.ID) error {
	q.worker.ForgetHostFailures()
	return q.Store.Flush(ctx, id)
}
