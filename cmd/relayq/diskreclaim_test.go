//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"relayq/internal/sink"
)

// smallExt4 makes an ext4 file system of size bytes in an image file
// (mkfs.ext4's defaults, as an operator's small volume would have them)
// and loop-mounts it, as smallDisk does a tmpfs.
func smallExt4(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "volume.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (e2fsprogs; .ci/run installs it): %v: %s", err, out)
	}
	return mountSmall(t, "a small ext4 volume (loop)", "-o", "loop", img)
}

// burstSize is the size of the messages of the burst tests: the issue's
// 200 KB.
const burstSize = 200_000

// TestBurstOnASmallVolumeIsRefusedAtMailAndIntakeComesBack is the full
// disk of a small installation, start to end. relayq's queue is on a
// 64 MiB ext4 volume (free_disk_medium 40MB, free_disk_high 30MB), its
// destination is down, and one client sends 200 KB messages as fast as
// loopback carries them. Back pressure must see the burst before the
// queue's reserve does: the first refusal is 452 4.3.1 at MAIL, before the
// body is sent, not 451 4.3.0 after it. Then the destination comes back
// and every message is delivered; the space the delivered mail took must
// come back too, with nothing done from outside: MAIL gets 250 again
// within 30 s of the last delivery.
func TestBurstOnASmallVolumeIsRefusedAtMailAndIntakeComesBack(t *testing.T) {
	mnt := smallExt4(t, 64<<20)
	_, listen, dest := startBackPressured(t, mnt, "30MB")
	start := freeSpace(t, mnt)

	s := &smtpSender{addr: listen, size: burstSize}
	defer s.close()
	var (
		acked []string
		stage string
		err   error
	)
	for i := 0; i < 400; i++ { // 80 MB: more than the volume holds
		tok := fmt.Sprintf("burst-%d", i)
		if stage, err = s.sendStaged(tok); err != nil {
			break
		}
		acked = append(acked, tok)
	}
	t.Logf("%d bytes free at the start; %d messages of %d bytes acknowledged, then %s got %v with %d bytes free",
		start, len(acked), burstSize, stage, err, freeSpace(t, mnt))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) || stage != "MAIL" {
		t.Fatalf("the burst ended with %v at %s, want 452 4.3.1 at MAIL", err, stage)
	}
	if len(acked) == 0 {
		t.Fatal("no message was acknowledged on an empty volume")
	}

	dst, err := sink.Start(sink.Options{Addr: dest})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := dst.Wait(ctx, len(acked)); err != nil {
		t.Fatalf("%d of %d acknowledged messages delivered: %v", dst.Count(), len(acked), err)
	}
	delivered := time.Now()
	t.Logf("all %d delivered; %d bytes free", len(acked), freeSpace(t, mnt))

	// Intake comes back by itself.
	var last error
	for time.Since(delivered) < 30*time.Second {
		if _, last = s.sendStaged("after"); last == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if last != nil {
		t.Fatalf("30 s after the last delivery intake still refuses mail (%v), with %d bytes free", last, freeSpace(t, mnt))
	}
	t.Logf("intake resumed %v after the last delivery, with %d bytes free", time.Since(delivered).Round(10*time.Millisecond), freeSpace(t, mnt))
	checkArrivedIntact(t, dst, append(acked, "after"), burstSize)
}
