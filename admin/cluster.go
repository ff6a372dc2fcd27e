package admin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Cluster states.
const (
	ClusterOK       = "ok"
	ClusterDegraded = "degraded" // Redis unreachable: each node on cap/expected_nodes
)

// ClusterStatus is what a node knows of the relayq nodes it shares
// destination limits with ([cluster]).
type ClusterStatus struct {
	State string `json:"state"` // ok | degraded
	Node  string `json:"node"`  // this node's name
	// Episodes counts the times this node lost Redis since it started.
	Episodes uint64 `json:"degraded_episodes"`
	// Nodes are those seen in the last 30 s (heartbeats); empty while
	// degraded.
	Nodes []ClusterNode `json:"nodes"`
	// Destinations are the destinations with leases or a learned cap: of
	// every node, or while degraded of this node only.
	Destinations []ClusterDestination `json:"destinations"`
	// Error says why Nodes and Destinations are this node's own view.
	Error string `json:"error,omitempty"`
}

// ClusterNode is one node as its heartbeats show it.
type ClusterNode struct {
	Name     string    `json:"name"`
	LastSeen time.Time `json:"last_seen"`
}

// ClusterDestination is one destination's shared state.
type ClusterDestination struct {
	Name       string         `json:"name"`
	LearnedCap int            `json:"learned_cap,omitempty"` // 0: none published
	Leases     map[string]int `json:"leases"`                // connection leases held, by node
}

// ClusterSource reports the cluster; the cluster client is one (through an
// adapter in the running instance).
type ClusterSource interface {
	Cluster() ClusterStatus
}

var (
	clusterDegradedDesc = prometheus.NewDesc("relayq_cluster_degraded",
		"1 while Redis is unreachable and each destination's cap and rate are divided by expected_nodes on this node.", nil, nil)
	clusterEpisodesDesc = prometheus.NewDesc("relayq_cluster_degraded_episodes_total",
		"Times this node lost Redis and fell back to local limits.", nil, nil)
	clusterNodesDesc = prometheus.NewDesc("relayq_cluster_nodes",
		"Nodes seen in the last 30 s (absent while degraded).", nil, nil)
	clusterLeasesDesc = prometheus.NewDesc("relayq_cluster_leases",
		"Connection leases held per destination and node.", []string{"destination", "node"}, nil)
	clusterCapDesc = prometheus.NewDesc("relayq_cluster_learned_cap",
		"Connection cap learned from 421 4.3.2 and shared by every node, per destination.", []string{"destination"}, nil)
)

// clusterCollector reads the cluster at scrape time.
type clusterCollector struct{ src ClusterSource }

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- clusterDegradedDesc
	ch <- clusterEpisodesDesc
	ch <- clusterNodesDesc
	ch <- clusterLeasesDesc
	ch <- clusterCapDesc
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Cluster()
	degraded := 0.0
	if st.State == ClusterDegraded {
		degraded = 1
	}
	ch <- prometheus.MustNewConstMetric(clusterDegradedDesc, prometheus.GaugeValue, degraded)
	ch <- prometheus.MustNewConstMetric(clusterEpisodesDesc, prometheus.CounterValue, float64(st.Episodes))
	if st.Error == "" {
		ch <- prometheus.MustNewConstMetric(clusterNodesDesc, prometheus.GaugeValue, float64(len(st.Nodes)))
	}
	for _, d := range st.Destinations {
		if d.LearnedCap > 0 {
			ch <- prometheus.MustNewConstMetric(clusterCapDesc, prometheus.GaugeValue, float64(d.LearnedCap), d.Name)
		}
		for node, n := range d.Leases {
			ch <- prometheus.MustNewConstMetric(clusterLeasesDesc, prometheus.GaugeValue, float64(n), d.Name, node)
		}
	}
}
