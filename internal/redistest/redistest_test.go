package redistest

import "testing"

func TestKillAndRestartOnSamePort(t *testing.T) {
	s := Start(t)
	if err := s.ping(); err != nil {
		t.Fatalf("after Start: %v", err)
	}
	s.Kill()
	if err := s.ping(); err == nil {
		t.Fatal("PING answered after Kill")
	}
	s.Restart()
	if err := s.ping(); err != nil {
		t.Fatalf("after Restart: %v", err)
	}
}
