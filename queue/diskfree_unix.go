//go:build unix

package queue

import "syscall"

// FreeBytes returns the bytes available to this (unprivileged) process on
// the volume holding dir: what Pebble can still write. It is the one
// free-space reading of relayq: the queue's reserve and back pressure both
// use it.
func FreeBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}
