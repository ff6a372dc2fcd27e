//go:build linux || darwin || freebsd || dragonfly

package relay

import "syscall"

// diskFree is the space on dir's volume available to this (unprivileged)
// process: what Pebble can still write.
func diskFree(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}
