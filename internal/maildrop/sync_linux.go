package maildrop

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS makes everything written to f's file system durable, the rename
// of f included: syncfs(2), for a writer that cannot open the directory.
func syncFS(f *os.File) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Syncfs(int(fd)) }); err != nil {
		return err
	}
	return serr
}
