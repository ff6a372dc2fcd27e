package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is the release version, set at build time:
//
//	go build -ldflags "-X main.version=v1.2.3" ./cmd/relayq
//
// It is the only package-level variable: the linker needs one to write to.
var version = "dev"

// versionCommand is `relayq version`.
func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, the Go version and the source revision",
		Action: func(cCtx *cli.Context) error {
			info, _ := debug.ReadBuildInfo()
			printVersion(cCtx.App.Writer, version, info)
			return nil
		},
	}
}

// printVersion writes "relayq <version>", then the Go version and, when the
// binary was built from a VCS checkout, the revision it was built from.
func printVersion(w io.Writer, v string, info *debug.BuildInfo) {
	if v == "dev" && info != nil && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version // `go install relayq/cmd/relayq@v1.2.3` records it
	}
	fmt.Fprintf(w, "relayq %s\n", v)
	goVersion := runtime.Version()
	if info != nil && info.GoVersion != "" {
		goVersion = info.GoVersion
	}
	fmt.Fprintf(w, "go: %s %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
	if info == nil {
		return
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		if settings["vcs.modified"] == "true" {
			rev += " (modified)"
		}
		fmt.Fprintf(w, "revision: %s\n", rev)
	}
	if t := settings["vcs.time"]; t != "" {
		fmt.Fprintf(w, "commit time: %s\n", t)
	}
}
