package server

import (
	"context"
	"io"

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

// plannedQueue is the queue the relay puts new messages into: the worker
// plans each one first, so that a message for a destination whose hosts
// are all cooling down is queued already put off, instead of being read
// back and rewritten by an attempt that tries nothing (Worker.Plan).
type plannedQueue struct {
	*queue.Store
	worker *smarthost.Worker
}

func (q plannedQueue) Put(ctx context.Context, id queue.ID, env *queue.Envelope, body io.Reader) error {
	dest, planned := q.worker.Plan(env)
	if err := q.Store.PutWaiting(ctx, id, env, body, dest); err != nil {
		return err
	}
	if planned != nil {
		planned(id)
	}
	return nil
}
