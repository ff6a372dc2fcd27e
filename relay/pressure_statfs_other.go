//go:build !(linux || darwin || freebsd || dragonfly)

package relay

// diskFree is not available here: free disk space is not monitored (the
// reading fails and keeps its level, normal).
func diskFree(string) (uint64, error) { return 0, errNoProbe }
