//go:build !unix

package queue

// freeBytes cannot tell here: no reserve is kept.
func freeBytes(string) (int64, bool) { return 0, false }
