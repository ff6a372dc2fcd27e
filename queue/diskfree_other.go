//go:build !unix

package queue

// FreeBytes cannot tell here: no reserve is kept, and back pressure does
// not watch free space.
func FreeBytes(string) (int64, bool) { return 0, false }
