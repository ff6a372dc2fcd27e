package maildrop

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// DirMode is the mode of the maildrop directory, as Postfix's maildrop:
// the owner (the relayq daemon) reads, writes and lists; the group (the
// users allowed to submit, like Postfix's postdrop) may create files but
// not list the directory nor read other users' files; the sticky bit lets
// only a file's owner (and the daemon, as the directory's owner) rename or
// remove it.
const DirMode = 0o730 | fs.ModeSticky

// The subdirectories where Pickup moves files it will not try again. They
// are the daemon's alone (0700).
const (
	CorruptDir = "corrupt" // not in the maildrop format
	RefusedDir = "refused" // refused for good (5xx) for some recipient
)

// Prepare creates the maildrop directory dir (and its parents, mode 0755)
// with DirMode, gives it the group named group ("" leaves the group as
// created: the daemon's), and creates the subdirectories. An existing
// directory gets the same mode and group.
func Prepare(dir, group string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return fmt.Errorf("maildrop group: %w", err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return fmt.Errorf("maildrop group %s: gid %q", group, g.Gid)
		}
		if err := os.Chown(dir, -1, gid); err != nil {
			return err
		}
	}
	// Chmod after Chown: a chown may clear the set-id bits, and the mode
	// must not depend on the umask.
	if err := os.Chmod(dir, DirMode); err != nil {
		return err
	}
	for _, sub := range []string{CorruptDir, RefusedDir} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return nil
}

// syncDir makes the entries of dir durable: an fsync of the directory, or,
// when the writer may not open it (no read permission), of its file
// system through f, a file in it.
func syncDir(dir string, f *os.File) error {
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrPermission) {
		return syncFS(f)
	}
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
