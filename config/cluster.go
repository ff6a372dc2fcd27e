package config

import (
	"net/url"
	"os"
	"strings"
	"time"
	"unicode"
)

// Cluster makes several relayq nodes share each destination's limits
// through Redis ([cluster]). Redis "" (the default) turns it off: every
// limit stays in the process, and no Redis is needed.
type Cluster struct {
	// Redis is the server's URL: redis://host:port/db, or rediss:// for
	// TLS. A password in the URL works; PasswordFile or PasswordEnv keep
	// it out of the file.
	Redis        string `toml:"redis"`
	PasswordFile string `toml:"password_file"`
	PasswordEnv  string `toml:"password_env"`
	// TLSCAFile holds the PEM certificates that may sign a rediss://
	// server's certificate (a private CA); "" = the system's roots.
	TLSCAFile string `toml:"tls_ca_file"`
	// Name namespaces the keys (relayq:{name}:…), so that two clusters can
	// share one Redis.
	Name string `toml:"name"`
	// Node names this node in the cluster's view; "" means the machine's
	// host name (NodeName).
	Node string `toml:"node"`
	// ExpectedNodes divides a destination's cap and rate while Redis is
	// unreachable: each node then keeps to cap/expected_nodes connections
	// (at least one) on its own.
	ExpectedNodes int `toml:"expected_nodes"`
	// LeaseTTL is how long a connection lease counts after its last
	// renewal (renewed every third of it): a node that dies or loses
	// Redis stops counting after it, and the others take its share.
	LeaseTTL Duration `toml:"lease_ttl"`
}

// DefaultClusterLeaseTTL is lease_ttl's default.
const DefaultClusterLeaseTTL = 30 * time.Second

// minLeaseTTL keeps renewals (every third of the TTL) well above the time
// a renewal of many leases may take.
const minLeaseTTL = 3 * time.Second

// Enabled reports whether a Redis server is configured.
func (c Cluster) Enabled() bool { return c.Redis != "" }

// Password returns the Redis password from PasswordFile or PasswordEnv;
// "" when neither is set (the URL's password, if any, applies then).
func (c Cluster) Password() (string, error) { return password(c.PasswordFile, c.PasswordEnv) }

// NodeName returns Node, or the machine's host name when it is empty (not
// the hostname key: nodes behind one load balancer usually share that
// EHLO name, but must not share a node name).
func (c Cluster) NodeName() string {
	if c.Node != "" {
		return c.Node
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		return "localhost"
	}
	return host
}

func defaultCluster() Cluster {
	return Cluster{Name: "default", ExpectedNodes: 2, LeaseTTL: Duration(DefaultClusterLeaseTTL)}
}

func (c *Config) validateCluster(p *problems) {
	cl := c.Cluster
	if cl.Redis != "" {
		u, err := url.Parse(cl.Redis)
		switch {
		case err != nil:
			p.add("cluster.redis", "%q is not a URL", cl.Redis)
		case u.Scheme != "redis" && u.Scheme != "rediss":
			p.add("cluster.redis", "%q: want redis://host:port/db or rediss://host:port/db", cl.Redis)
		case u.Host == "":
			p.add("cluster.redis", "%q has no host", cl.Redis)
		}
	}
	if cl.TLSCAFile != "" && !strings.HasPrefix(cl.Redis, "rediss://") {
		p.add("cluster.tls_ca_file", "needs a rediss:// URL in cluster.redis")
	}
	if cl.PasswordFile != "" && cl.PasswordEnv != "" {
		p.add("cluster.password_file", "set password_file or password_env, not both")
	}
	for _, k := range []struct{ key, v string }{{"cluster.name", cl.Name}, {"cluster.node", cl.Node}} {
		// Both end up inside Redis keys, where "}" or ":" would change
		// the key's hash slot or shape.
		if strings.ContainsFunc(k.v, func(r rune) bool {
			return unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune("{}:", r)
		}) {
			p.add(k.key, "%q contains white space, control characters or one of { } :", k.v)
		}
	}
	if cl.Name == "" {
		p.add("cluster.name", "must not be empty")
	}
	p.positive("cluster.expected_nodes", cl.ExpectedNodes)
	if cl.LeaseTTL.Std() < minLeaseTTL {
		p.add("cluster.lease_ttl", "%s is below %s", cl.LeaseTTL.Std(), minLeaseTTL)
	}
}
