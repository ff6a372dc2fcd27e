package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"relayq/admin"
)

// printCluster prints the [cluster] part of `relayq status`: whether
// limits are shared, the nodes seen, each destination's shared cap and
// leases per node.
func printCluster(w io.Writer, cl admin.ClusterStatus, now time.Time) {
	line := "cluster: " + cl.State + " (node " + cl.Node + ")"
	if cl.State == admin.ClusterDegraded {
		line += "; Redis unreachable: each destination's cap and rate divided by expected_nodes here"
	}
	fmt.Fprintf(w, "Cluster:\t%s\n", line)
	if cl.Error == "" {
		names := make([]string, len(cl.Nodes))
		for i, n := range cl.Nodes {
			names[i] = fmt.Sprintf("%s (%s ago)", n.Name, admin.FormatAge(now.Sub(n.LastSeen)))
		}
		fmt.Fprintf(w, "  nodes seen in the last 30 s:\t%d: %s\n", len(cl.Nodes), strings.Join(names, ", "))
	} else {
		fmt.Fprintf(w, "  %s\n", cl.Error)
	}
	for _, d := range cl.Destinations {
		nodes := slices.Sorted(maps.Keys(d.Leases))
		leases := make([]string, len(nodes))
		for i, n := range nodes {
			leases[i] = fmt.Sprintf("%s %d", n, d.Leases[n])
		}
		learned := "-"
		if d.LearnedCap > 0 {
			learned = fmt.Sprint(d.LearnedCap)
		}
		fmt.Fprintf(w, "  %s\tshared cap %s\tleases: %s\n", d.Name, learned, dash(strings.Join(leases, ", ")))
	}
}
