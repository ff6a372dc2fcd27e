package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// File is a certificate and key read from PEM files, served to TLS
// handshakes through GetCertificate and re-read by Reload.
type File struct {
	certPath, keyPath string
	cur               atomic.Pointer[tls.Certificate]

	mu struct {
		sync.Mutex
		seen [2]stamp // of certPath and keyPath when cur was loaded
	}
}

// stamp tells whether a file changed: a renewal rewrites it (size, time)
// or renames a new file over it (inode).
type stamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

func stampOf(path string) (stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	s := stamp{mod: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = uint64(st.Ino)
	}
	return s, nil
}

// Load reads the pair at certPath and keyPath. An error names the files.
func Load(certPath, keyPath string) (*File, error) {
	f := &File{certPath: certPath, keyPath: keyPath}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload reads the pair again and serves it from the next handshake on. On
// error the pair served so far stays.
func (f *File) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked()
}

func (f *File) reloadLocked() error {
	var seen [2]stamp
	for i, p := range []string{f.certPath, f.keyPath} {
		s, err := stampOf(p)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		seen[i] = s
	}
	cert, err := tls.LoadX509KeyPair(f.certPath, f.keyPath)
	if err != nil {
		return fmt.Errorf("tls: %s and %s: %w", f.certPath, f.keyPath, err)
	}
	f.cur.Store(&cert)
	f.mu.seen = seen
	return nil
}

// stamps returns the files' stamps now; one that cannot be read has the
// zero stamp, which differs from any of a loaded pair.
func (f *File) stamps() [2]stamp {
	var now [2]stamp
	now[0], _ = stampOf(f.certPath)
	now[1], _ = stampOf(f.keyPath)
	return now
}

// GetCertificate is the tls.Config hook: the pair in force.
func (f *File) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := f.cur.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("tls: no certificate loaded")
}

// ServerConfig is a server tls.Config that presents the pair in force.
func (f *File) ServerConfig() *tls.Config {
	return &tls.Config{GetCertificate: f.GetCertificate, MinVersion: tls.VersionTLS12}
}

// Watch polls the files every interval until ctx is done and reloads the
// pair when either changed. A pair that does not load is logged once per
// change of the files, and the old one keeps serving.
func (f *File) Watch(ctx context.Context, every time.Duration, log zerolog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	var failed [2]stamp // the files as they were at the last failed load
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.mu.Lock()
		if now := f.stamps(); now != f.mu.seen {
			if err := f.reloadLocked(); err != nil {
				if now != failed {
					log.Error().Err(err).Msg("tls: the changed certificate does not load; the previous one stays in use")
				}
				failed = now
			} else {
				log.Info().Str("cert_file", f.certPath).Msg("tls: certificate reloaded")
			}
		}
		f.mu.Unlock()
	}
}
