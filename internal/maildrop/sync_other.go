//go:build !linux

package maildrop

import (
	"os"
	"syscall"
)

// syncFS makes the rename of f durable where syncfs(2) is missing: sync(2)
// flushes every file system.
func syncFS(*os.File) error {
	syscall.Sync()
	return nil
}
