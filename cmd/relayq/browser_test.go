package main

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// browserArgs are the flags that make chromium run headless in a container
// and fetch nothing but the page (no updates, sync or QUIC probes).
var browserArgs = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--hide-scrollbars", "--window-size=1280,900",
}

// TestStatusPageInChromium loads the status page of a running relayq whose
// destination is down in a real browser (Debian's chromium, headless),
// checks that the rendered DOM shows the queue count and keeps a
// screenshot: at $RELAYQ_SCREENSHOT if set (`make browser-test` writes
// docs/status-page.png), else in the test's temporary directory.
func TestStatusPageInChromium(t *testing.T) {
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Skip("chromium is not installed; `make browser-test` installs it with apt-get and runs this test")
	}
	in := opsRelayq(t, downAddr(t))
	submit(t, in.Addrs()[0], "app@shop.invalid", "user@dest.invalid", []string{"p1", "p2"}, 3000)
	submit(t, in.Addrs()[0], "cron@ops.invalid", "root@backup.invalid", []string{"p3"}, 800)
	waitDeferred(t, in.AdminAddr(), 3)
	url := "http://" + in.AdminAddr() + "/"

	dom := runBrowser(t, browser, "--dump-dom", url)
	if !regexp.MustCompile(`id="queue-count"[^>]*>3<`).Match(dom) {
		t.Fatalf("the rendered page does not show 3 queued messages:\n%s", dom)
	}
	for _, want := range []string{"451 4.4.1 connection refused", "4.4.1 No answer from host"} {
		if !bytes.Contains(dom, []byte(want)) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}

	shot := os.Getenv("RELAYQ_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "status-page.png")
	} else if abs, err := filepath.Abs(shot); err == nil {
		shot = abs
	}
	if err := os.MkdirAll(filepath.Dir(shot), 0o755); err != nil {
		t.Fatal(err)
	}
	runBrowser(t, browser, "--screenshot="+shot, url)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 900 {
		t.Errorf("screenshot is %dx%d, want 1280x900", b.Dx(), b.Dy())
	}
	t.Logf("screenshot: %s", shot)
}

// runBrowser runs chromium headless with a fresh profile and returns its
// standard output.
func runBrowser(t *testing.T, browser string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	argv := append(append([]string{"--user-data-dir=" + t.TempDir()}, browserArgs...), args...)
	cmd := exec.CommandContext(ctx, browser, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", browser, args, err, stderr.Bytes())
	}
	return stdout.Bytes()
}
