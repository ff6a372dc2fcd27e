//go:build unix

package diskspace

import "syscall"

// Free returns the bytes available to this (unprivileged) process on the
// volume holding dir: what Pebble can still write.
func Free(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}
