package pressure

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"

	"relayq/internal/diskspace"
)

// diskFree is the space on dir's volume available to this process, as the
// queue reads it for its reserve (diskspace.Free); errNoProbe where it
// cannot be read, and free disk space is then not monitored (the reading
// fails and keeps its level, normal).
func diskFree(dir string) (uint64, error) {
	free, ok := diskspace.Free(dir)
	if !ok {
		return 0, errNoProbe
	}
	return uint64(free), nil
}

// noCgroupLimit: cgroup v1 reports "no limit" as a huge number (the
// largest page-aligned int64); anything above this is no limit.
const noCgroupLimit = 1 << 60

// processMemory is the memory the process holds: its resident set
// (/proc/self/statm), or where there is no /proc the memory the Go runtime
// has mapped and not returned (runtime/metrics).
func processMemory() (uint64, error) {
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if rss, err := parseStatm(b, os.Getpagesize()); err == nil {
			return rss, nil
		}
	}
	s := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return 0, errNoProbe
	}
	return s[0].Value.Uint64() - s[1].Value.Uint64(), nil
}

// parseStatm returns the resident size from /proc/self/statm: its second
// field, in pages.
func parseStatm(b []byte, pageSize int) (uint64, error) {
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("statm: %q", b)
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("statm: %w", err)
	}
	return pages * uint64(pageSize), nil
}

// memoryLimit is the memory the process may use: the cgroup limit (v2
// memory.max, v1 memory.limit_in_bytes) when there is one below the RAM
// size, else the RAM size (/proc/meminfo MemTotal).
func memoryLimit() (uint64, error) {
	return memoryLimitAt("/proc", "/sys/fs/cgroup")
}

func memoryLimitAt(proc, cgroupRoot string) (uint64, error) {
	total, terr := memTotal(filepath.Join(proc, "meminfo"))
	limit, ok := cgroupLimit(filepath.Join(proc, "self", "cgroup"), cgroupRoot)
	switch {
	case ok && (terr != nil || limit < total):
		return limit, nil
	case terr != nil:
		return 0, terr
	}
	return total, nil
}

// memTotal reads MemTotal from a meminfo file.
func memTotal(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: MemTotal: %w", path, err)
		}
		return kb * 1024, nil // "kB" in meminfo is KiB
	}
	return 0, errors.New(path + ": no MemTotal")
}

// cgroupLimit finds the memory limit of the process's cgroup from its
// /proc/self/cgroup file, looking under the cgroup's own directory and
// then at the root (in a container the cgroup namespace puts it there).
func cgroupLimit(selfCgroup, root string) (uint64, bool) {
	b, err := os.ReadFile(selfCgroup)
	if err != nil {
		return 0, false
	}
	var candidates []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		// hierarchy-ID:controller-list:cgroup-path (cgroups(7))
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		path := filepath.Clean("/" + parts[2])
		switch {
		case parts[0] == "0" && parts[1] == "": // v2
			candidates = append(candidates,
				filepath.Join(root, path, "memory.max"), filepath.Join(root, "memory.max"))
		case hasController(parts[1], "memory"): // v1
			candidates = append(candidates,
				filepath.Join(root, "memory", path, "memory.limit_in_bytes"),
				filepath.Join(root, "memory", "memory.limit_in_bytes"))
		}
	}
	for _, c := range candidates {
		v, err := os.ReadFile(c)
		if err != nil {
			continue
		}
		s := strings.TrimSpace(string(v))
		if s == "max" {
			return 0, false
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 || n >= noCgroupLimit {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
