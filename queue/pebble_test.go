package queue

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestTablesEndAtKeyPrefixes checks that no table Pebble writes spans two
// key prefixes: a flush of bodies, records and schedule entries together
// becomes one table per prefix, so that new bodies and records, whose IDs
// grow with time, do not overlap every older record and schedule entry in
// the level below (see pebbleOptions).
func TestTablesEndAtKeyPrefixes(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		env := envelope("a@x.invalid", "b@y.invalid")
		env.NextAttempt = time.Now().Add(time.Duration(i) * time.Minute)
		if err := s.Put(ctx, s.NewID(), env, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	levels, err := s.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	prefixes := map[string]bool{}
	for _, tables := range levels {
		for _, tbl := range tables {
			lo, hi := tbl.Smallest.UserKey, tbl.Largest.UserKey
			p := lo[:bytes.IndexByte(lo, '/')+1]
			if !bytes.HasPrefix(hi, p) {
				t.Errorf("table %s spans %q .. %q", tbl.FileNum, lo, hi)
			}
			prefixes[string(p)] = true
		}
	}
	for _, p := range []string{prefixBody, prefixMeta, prefixSchedule} {
		if !prefixes[p] {
			t.Errorf("no table of prefix %s; tables of %v", p, prefixes)
		}
	}
}
