package relay

import "relayq/queue"

// diskFree is the space on dir's volume available to this process, as the
// queue reads it for its reserve (queue.FreeBytes); errNoProbe where it
// cannot be read, and free disk space is then not monitored (the reading
// fails and keeps its level, normal).
func diskFree(dir string) (uint64, error) {
	free, ok := queue.FreeBytes(dir)
	if !ok {
		return 0, errNoProbe
	}
	return uint64(free), nil
}
