package admin

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeCluster struct {
	mu sync.Mutex
	st ClusterStatus
}

func (f *fakeCluster) Cluster() ClusterStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeCluster) set(st ClusterStatus) {
	f.mu.Lock()
	f.st = st
	f.mu.Unlock()
}

// A degraded cluster is still ready (delivery goes on, on local limits),
// and /readyz, /metrics and /api/status all say so; shared state shows per
// destination and node.
func TestClusterStateShowsInReadyzMetricsAndStatus(t *testing.T) {
	cl := &fakeCluster{st: ClusterStatus{State: ClusterOK, Node: "n1",
		Nodes:        []ClusterNode{{Name: "n1", LastSeen: time.Now()}, {Name: "n2", LastSeen: time.Now()}},
		Destinations: []ClusterDestination{{Name: "mx:dest.invalid", LearnedCap: 6, Leases: map[string]int{"n1": 4, "n2": 2}}},
	}}
	f := newFixture(t, func(o *Options) { o.Cluster = cl })
	if code, body := f.do("GET", "/readyz", nil); code != http.StatusOK || strings.Contains(string(body), "degraded") {
		t.Fatalf("readyz with the cluster ok = %d %q", code, body)
	}
	_, m := f.do("GET", "/metrics", nil)
	for series, want := range map[string]float64{
		"relayq_cluster_degraded": 0,
		"relayq_cluster_nodes":    2,
		`relayq_cluster_leases{destination="mx:dest.invalid",node="n1"}`: 4,
		`relayq_cluster_leases{destination="mx:dest.invalid",node="n2"}`: 2,
		`relayq_cluster_learned_cap{destination="mx:dest.invalid"}`:      6,
	} {
		if got := metric(t, m, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}

	cl.set(ClusterStatus{State: ClusterDegraded, Node: "n1", Episodes: 1, Error: "Redis unreachable",
		Destinations: []ClusterDestination{{Name: "mx:dest.invalid", Leases: map[string]int{"n1": 3}}}})
	code, body := f.do("GET", "/readyz", nil)
	if code != http.StatusOK || !strings.Contains(string(body), "cluster: degraded") {
		t.Fatalf("readyz degraded = %d %q, want 200 saying cluster: degraded", code, body)
	}
	_, m = f.do("GET", "/metrics", nil)
	if metric(t, m, "relayq_cluster_degraded") != 1 || metric(t, m, "relayq_cluster_degraded_episodes_total") != 1 {
		t.Errorf("metrics do not show the degraded episode:\n%s", m)
	}
	var st Status
	f.getJSON("/api/status", &st)
	if st.Cluster == nil || st.Cluster.State != ClusterDegraded || st.Cluster.Destinations[0].Leases["n1"] != 3 {
		t.Errorf("status cluster = %+v", st.Cluster)
	}
}
