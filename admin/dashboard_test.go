package admin

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestGrafanaDashboardUsesOnlyExportedMetrics keeps
// contrib/grafana-dashboard.json true to what /metrics serves.
func TestGrafanaDashboardUsesOnlyExportedMetrics(t *testing.T) {
	dash, err := os.ReadFile("../contrib/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, nil)
	f.dests.list = []Destination{{Name: "mx:dest.invalid", Cap: 20}}
	_, exposition := f.do("GET", "/metrics", nil)
	exported := map[string]bool{}
	for _, line := range strings.Split(string(exposition), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, kind, _ := strings.Cut(name, " ")
			exported[name] = true
			if kind == "histogram" {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					exported[name+suffix] = true
				}
			}
		}
	}
	used := regexp.MustCompile(`\b(relayq|go)_[a-z_]+`).FindAllString(string(dash), -1)
	if len(used) == 0 {
		t.Fatal("the dashboard uses no relayq metric")
	}
	for _, name := range used {
		if !exported[name] {
			t.Errorf("the dashboard uses %s, which /metrics does not serve", name)
		}
	}
}
