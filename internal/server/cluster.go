package server

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"relayq/admin"
	"relayq/cluster"
	"relayq/config"
	"relayq/smarthost"
)

// clusterStatusTimeout bounds the Redis reads of one status view.
const clusterStatusTimeout = 2 * time.Second

// clusterSource shows the cluster client to admin: the nodes and every
// destination's shared state from Redis, or while Redis is unreachable
// this node's own leases.
type clusterSource struct {
	c    *cluster.Client
	node string
}

func (s clusterSource) Cluster() admin.ClusterStatus {
	st := admin.ClusterStatus{State: admin.ClusterOK, Node: s.node, Episodes: s.c.Episodes()}
	if s.c.Degraded() {
		st.State = admin.ClusterDegraded
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterStatusTimeout)
	defer cancel()
	nodes, err := s.c.Nodes(ctx)
	var dests []cluster.DestView
	if err == nil {
		dests, err = s.c.Destinations(ctx)
	}
	if err != nil {
		st.Error = "Redis unreachable: this node's own leases"
		st.Nodes = nil
		for dest, n := range s.c.Held() {
			st.Destinations = append(st.Destinations, admin.ClusterDestination{Name: dest, Leases: map[string]int{s.node: n}})
		}
		return st
	}
	for _, n := range nodes {
		st.Nodes = append(st.Nodes, admin.ClusterNode{Name: n.Name, LastSeen: n.LastSeen})
	}
	for _, d := range dests {
		st.Destinations = append(st.Destinations, admin.ClusterDestination{Name: d.Dest, LearnedCap: d.LearnedCap, Leases: d.Leases})
	}
	return st
}

// openCluster connects to [cluster]'s Redis when one is configured and
// gives the worker the limits to share. Redis being down does not stop
// the start: the client begins on local limits and shares once it answers.
func (in *Instance) openCluster(cfg config.Cluster, w *smarthost.Worker) error {
	redis.SetLogger(cluster.RedisLogger(in.log))
	c, err := cluster.Open(context.Background(), cfg, in.log)
	if err != nil || c == nil {
		return err
	}
	in.cluster, w.Cluster = c, c
	in.log.Info().Str("node", cfg.NodeName()).Str("cluster", cfg.Name).Int("expected_nodes", cfg.ExpectedNodes).
		Msg("cluster: destination limits shared through Redis")
	return nil
}

// clusterSource is the admin view of the cluster; nil without one.
func (in *Instance) clusterSource() admin.ClusterSource {
	if in.cluster == nil {
		return nil
	}
	return clusterSource{c: in.cluster, node: in.cfg.Cluster.NodeName()}
}

// closeCluster gives back the leases still held and leaves the cluster.
func (in *Instance) closeCluster() {
	if in.cluster == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterStatusTimeout)
	defer cancel()
	if err := in.cluster.Close(ctx); err != nil {
		in.log.Warn().Err(err).Msg("cluster: closing the Redis connection")
	}
}
