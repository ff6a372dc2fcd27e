package smarthost

import (
	"sync"
	"time"

	"relayq/queue"
)

// maxKnown bounds the messages the scheduler holds in memory: in its
// lines and in flight. A message is an ID and a few counters there, and
// the envelope the routing read (see job), never its body: 100,000 take
// a few tens of MB. While it is full no more due mail is taken from the
// queue; what is due stays on disk.
const maxKnown = 100_000

// scanBatch is the most IDs one scan of the schedule takes.
const scanBatch = 1024

// sched is the scheduler's state: a line of work per destination, served
// round-robin, each destination never given more deliveries at a time than
// its connection cap allows, nor all of them together more than MaxConns.
//
// A line holds message IDs, oldest due first; the message a 421 4.3.2 sent
// back is put at the front. Mail not yet routed waits in the line named ""
// (routing), whose deliveries route it: a message whose destination has a
// free connection is delivered at once, else it joins that destination's
// line. An attempt never waits for a connection slot while it holds one of
// the MaxConns: it joins the line instead.
type sched struct {
	maxRun int // MaxConns: deliveries (and routings) at a time

	mu struct {
		sync.Mutex
		lines   map[string]*line
		ring    []*line // the lines with work, in the order they are served
		rr      int     // where the next round starts in ring
		known   map[queue.ID]bool
		running int
		// pacedAt is the earliest time a line skipped for its
		// destination's rate may send (zero: none skipped); Run wakes
		// then (pacedWait).
		pacedAt time.Time
	}
}

// gate says whether a delivery to a destination may start now: capOf is
// its connection cap, pace takes its turn of its message rate (pacer.
// reserve) or says when it may have one.
type gate struct {
	capOf func(dest string) int
	pace  func(dest string) (ok bool, at time.Time)
}

// line is one destination's work ("" for mail not yet routed).
type line struct {
	dest   string
	jobs   []*job // oldest first; jobs sent back by a 421 4.3.2 in front
	active int    // deliveries running for it
	inRing bool
}

// job is a message waiting in (or taken from) a line.
type job struct {
	id queue.ID
	// due is the message's schedule entry as the scan found it (zero for
	// a job made otherwise): Worker.recheck looks for it after an attempt.
	due  time.Time
	busy int // 421 4.3.2s it met in a row (maxBusyRetries)
	// m, when set, is the message as read by the routing that put the job
	// in its destination's line, with nothing committed since, and changes
	// is the queue's Changes before that read: the delivery reuses m if
	// no change was made to the queue since (Worker.read). At a million
	// queued a Get is the dearest part of an attempt; without this, each
	// message that waits for a slot is read twice.
	m       *queue.Message
	changes uint64
}

func newSched(maxRun int) *sched {
	s := &sched{maxRun: maxRun}
	s.reset()
	return s
}

// reset empties the lines (a new Run: they are refilled from the queue).
func (s *sched) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.lines, s.mu.ring, s.mu.rr = map[string]*line{}, nil, 0
	s.mu.known, s.mu.running = map[queue.ID]bool{}, 0
}

// knows reports whether id is in a line or in flight: the scan of the
// schedule passes over it.
func (s *sched) knows(id queue.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.known[id]
}

// add puts due messages in the routing line.
func (s *sched) add(es []queue.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range es {
		if !s.mu.known[e.ID] {
			s.mu.known[e.ID] = true
			s.pushLocked("", &job{id: e.ID, due: e.Due}, false)
		}
	}
}

// room is how many more messages may be taken from the queue.
func (s *sched) room() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maxKnown - len(s.mu.known)
}

func (s *sched) lineLocked(dest string) *line {
	l := s.mu.lines[dest]
	if l == nil {
		l = &line{dest: dest}
		s.mu.lines[dest] = l
	}
	return l
}

// pushLocked appends j to dest's line, or puts it in front.
func (s *sched) pushLocked(dest string, j *job, front bool) {
	l := s.lineLocked(dest)
	if front {
		l.jobs = append(l.jobs, nil)
		copy(l.jobs[1:], l.jobs)
		l.jobs[0] = j
	} else {
		l.jobs = append(l.jobs, j)
	}
	if !l.inRing {
		l.inRing = true
		s.mu.ring = append(s.mu.ring, l)
	}
}

// next takes the next job to start, round-robin over the lines with work
// whose destination has a slot free under its cap and whose rate allows a
// message now (g), or returns nil. Until finish, the job counts against its
// line's cap and against MaxConns.
func (s *sched) next(g gate) (*job, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.running >= s.maxRun {
		return nil, ""
	}
	for tries := len(s.mu.ring); tries > 0 && len(s.mu.ring) > 0; tries-- {
		if s.mu.rr >= len(s.mu.ring) {
			s.mu.rr = 0
		}
		l := s.mu.ring[s.mu.rr]
		if len(l.jobs) == 0 {
			l.inRing = false
			s.mu.ring = append(s.mu.ring[:s.mu.rr], s.mu.ring[s.mu.rr+1:]...)
			s.forgetLocked(l)
			continue
		}
		s.mu.rr++
		if l.dest != "" && !s.mayStartLocked(l.dest, l.active, g) {
			continue
		}
		j := l.jobs[0]
		l.jobs[0] = nil
		l.jobs = l.jobs[1:]
		l.active++
		s.mu.running++
		return j, l.dest
	}
	return nil, ""
}

// mayStartLocked reports whether a delivery to dest, which has active
// running, may start now: a slot free, and its rate's turn taken (pacedAt
// notes when it may be had, if not).
func (s *sched) mayStartLocked(dest string, active int, g gate) bool {
	if active >= g.capOf(dest) {
		return false
	}
	ok, at := g.pace(dest)
	if !ok && (s.mu.pacedAt.IsZero() || at.Before(s.mu.pacedAt)) {
		s.mu.pacedAt = at
	}
	return ok
}

// pacedWait is how long from now until a line skipped for its rate may
// send, or an hour if none was; it clears the note (the next skip makes a
// new one).
func (s *sched) pacedWait(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.mu.pacedAt
	s.mu.pacedAt = time.Time{}
	if at.IsZero() {
		return time.Hour
	}
	return max(at.Sub(now), 0)
}

// enter gives a delivery already running (routing a message, or done with
// another destination of it) a slot of dest, if dest has one free, its
// rate allows a message, and it has no line of its own: it must not pass
// the mail waiting there. leave gives the slot back.
func (s *sched) enter(dest string, g gate) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lineLocked(dest)
	if len(l.jobs) > 0 || !s.mayStartLocked(dest, l.active, g) {
		s.forgetLocked(l)
		return false
	}
	l.active++
	return true
}

func (s *sched) leave(dest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.mu.lines[dest]
	l.active--
	s.forgetLocked(l)
}

// requeue puts a job whose delivery stops in dest's line (in front for one
// a 421 4.3.2 sent back); it stays known.
func (s *sched) requeue(dest string, j *job, front bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pushLocked(dest, j, front)
}

// finish ends the job taken from from's line by next. A job not requeued
// is forgotten: its message was committed (rescheduled or done), and the
// next scan finds it when it is due again.
func (s *sched) finish(from string, j *job, requeued bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.running--
	l := s.mu.lines[from]
	l.active--
	if !requeued {
		delete(s.mu.known, j.id)
	}
	s.forgetLocked(l)
}

// forgetLocked drops an idle, empty line (bounded memory: MX delivery
// meets many destinations).
func (s *sched) forgetLocked(l *line) {
	if l.active == 0 && len(l.jobs) == 0 && !l.inRing {
		delete(s.mu.lines, l.dest)
	}
}

// waitingFor returns how many messages wait in dest's line.
func (s *sched) waitingFor(dest string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.mu.lines[dest]; l != nil {
		return len(l.jobs)
	}
	return 0
}

// waiting returns how many messages wait in each destination's line.
func (s *sched) waiting() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.mu.lines))
	for name, l := range s.mu.lines {
		if name != "" && len(l.jobs) > 0 {
			out[name] = len(l.jobs)
		}
	}
	return out
}
