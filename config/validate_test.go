package config

import (
	"errors"
	"strings"
	"testing"
)

// A bcrypt hash of a random password nobody knows.
const testHash = `$2a$10$ynRNgfygLk1ell3Cg4wfYOyeAn.mC8q1eRmj9E/qVEQLGO18gMM32`

func TestValidateErrorNamesKeyAndProblem(t *testing.T) {
	tests := []struct {
		name string
		file string
		want string
	}{
		{"zero message size", "[limits]\nmax_message_size = 0", "limits.max_message_size: must be > 0"},
		{"zero recipients", "[limits]\nmax_recipients = 0", "limits.max_recipients: must be > 0"},
		{"negative per-source cap", "[limits]\nmax_connections_per_source = -1", "limits.max_connections_per_source: must be > 0"},
		{"zero hops", "[limits]\nmax_hops = 0", "limits.max_hops: must be > 0"},
		{"bare line endings", "[limits]\nbare_line_endings = \"ignore\"", `limits.bare_line_endings: "ignore" is not one of normalize, reject`},
		{"wrong TOML type", "[limits]\nmax_recipients = \"100\"", "limits.max_recipients"},
		{"empty hostname", `hostname = ""`, "hostname: must not be empty"},
		{"hostname with space", `hostname = "my host"`, "hostname:"},
		{"empty data dir", `data_dir = ""`, "data_dir: must not be empty"},
		{"no listeners", "listener = []", "listener: at least one"},
		{"listener without port", "[[listener]]\naddress = \"127.0.0.1\"", "listener[0].address"},
		{"duplicate listeners", "[[listener]]\naddress = \"127.0.0.1:25\"\n[[listener]]\naddress = \"127.0.0.1:25\"",
			`listener[1].address: "127.0.0.1:25" is also the address of listener[0]`},
		{"submission without users", "[[listener]]\naddress = \"127.0.0.1:587\"\nmode = \"submission\"\nallow_insecure_auth = true",
			"listener[0].mode: submission requires AUTH, but there is no [[relay.user]]"},
		{"submission without tls", "[[listener]]\naddress = \"127.0.0.1:587\"\nmode = \"submission\"\n[[relay.user]]\nname = \"a\"\npassword_hash = '" + testHash + "'",
			"allow_insecure_auth = true"},
		{"cert without key", "[tls]\ncert_file = \"c.pem\"", "tls: cert_file and key_file must be set together"},
		{"network /33", "[relay]\nallowed_networks = [\"10.0.0.0/33\"]", `relay.allowed_networks[0]: "10.0.0.0/33" is not a network`},
		{"user without name", "[[relay.user]]\npassword_hash = '" + testHash + "'", "relay.user[0].name: must not be empty"},
		{"user with plain password", "[[relay.user]]\nname = \"a\"\npassword_hash = \"hunter2\"", "relay.user[0].password_hash: not a bcrypt hash"},
		{"duplicate user", "[[relay.user]]\nname = \"a\"\npassword_hash = '" + testHash + "'\n[[relay.user]]\nname = \"a\"\npassword_hash = '" + testHash + "'",
			`relay.user[1].name: "a" is also the name of relay.user[0]`},
		{"free disk order", "[back_pressure]\nfree_disk_medium = \"1GB\"\nfree_disk_high = \"2GB\"", "back_pressure.free_disk_medium: 1GB is less than back_pressure.free_disk_high (2GB)"},
		{"free disk high below the reserve", "[back_pressure]\nfree_disk_high = \"10MB\"", "back_pressure.free_disk_high: 10MB is below the 16MiB the queue keeps free on its volume (it refuses mail below that anyway): set at least 16MiB, or 0 to turn this level off"},
		{"free disk medium below the reserve", "[back_pressure]\nfree_disk_medium = \"16MB\"\nfree_disk_high = \"0\"", "back_pressure.free_disk_medium: 16MB is below the 16MiB"},
		{"queue order", "[back_pressure]\nqueue_messages_medium = 10\nqueue_messages_high = 5", "back_pressure.queue_messages_medium: 10 is more than"},
		{"memory over 100%", "[back_pressure]\nmemory_high = \"150%\"", "back_pressure.memory_high: 150% is not above 0% and at most 100%"},
		{"memory as a whole number", "[back_pressure]\nmemory_medium = 75", "back_pressure.memory_medium: 7500%"},
		{"memory order", "[back_pressure]\nmemory_medium = \"95%\"", "back_pressure.memory_medium: 95% is more than back_pressure.memory_high (90%)"},
		{"dns server name", "[delivery]\ndns_servers = [\"dns.example\"]", `delivery.dns_servers[0]: "dns.example" is not an IP address`},
		{"mx port 0", "[delivery]\nmx_port = 0", "delivery.mx_port: 0 is not a port"},
		{"mx port too big", "[delivery]\nmx_port = 65536", "delivery.mx_port: 65536 is not a port"},
		{"outbound connections", "[delivery]\nmax_connections_per_destination = 0", "delivery.max_connections_per_destination: must be > 0"},
		{"smarthost tls", "[delivery.smarthost]\ntls = \"always\"", `delivery.smarthost.tls: "always" is not one of none, opportunistic, starttls, implicit`},
		{"smarthost without port", "[delivery.smarthost]\nhosts = [\"smtp.isp.example\"]", `delivery.smarthost.hosts[0]: "smtp.isp.example" is not host:port`},
		{"smarthost user without password", "[delivery.smarthost]\nusername = \"u\"", "delivery.smarthost.username: set, but neither password_file nor password_env is"},
		{"smarthost two password sources", "[delivery.smarthost]\nusername = \"u\"\npassword_file = \"f\"\npassword_env = \"E\"", "delivery.smarthost.password_file: set together with password_env"},
		{"smarthost password without user", "[delivery.smarthost]\npassword_env = \"E\"", "delivery.smarthost.username: required"},
		{"route without domains", "[[delivery.route]]\nvia = \"mx\"", "delivery.route[0].domains: at least one domain or sender is required"},
		{"route sender without domain", "[[delivery.route]]\nvia = \"mx\"\nsenders = [\"app\"]", `delivery.route[0].senders[0]: "app" is not an address or *@domain pattern`},
		{"route sender wildcard in the local part", "[[delivery.route]]\nvia = \"mx\"\nsenders = [\"a*@b.example\"]", `delivery.route[0].senders[0]: "a*@b.example" is not an address`},
		{"route sender wildcard domain", "[[delivery.route]]\nvia = \"mx\"\nsenders = [\"*@*.b.example\"]", `delivery.route[0].senders[0]: "*@*.b.example" is not an address`},
		{"route rewrite sender with a name", "[[delivery.route]]\nvia = \"mx\"\nsenders = [\"*@b.example\"]\nrewrite_sender = \"Relay <r@b.example>\"", `delivery.route[0].rewrite_sender: "Relay <r@b.example>" is not a bare address`},
		{"route rewrite from value", "[[delivery.route]]\nvia = \"mx\"\nsenders = [\"*@b.example\"]\nrewrite_sender = \"r@b.example\"\nrewrite_from = \"yes\"", `delivery.route[0].rewrite_from: "yes" is not one of keep, replace, reply-to`},
		{"route rewrite from without sender", "[[delivery.route]]\nvia = \"mx\"\nsenders = [\"*@b.example\"]\nrewrite_from = \"replace\"", `delivery.route[0].rewrite_from: "replace" needs rewrite_sender`},
		{"route bad domain", "[[delivery.route]]\nvia = \"mx\"\ndomains = [\"a@b.example\"]", `delivery.route[0].domains[0]: "a@b.example" is not a domain`},
		{"route without via", "[[delivery.route]]\ndomains = [\"a.example\"]", `delivery.route[0].via: "" is not one of mx, smarthost`},
		{"mx route with hosts", "[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"mx\"\nhosts = [\"10.0.0.1:25\"]", "delivery.route[0].hosts: only for via"},
		{"mx route with implicit tls", "[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"mx\"\ntls = \"implicit\"", "delivery.route[0].tls: implicit TLS"},
		{"route bad tls", "[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"mx\"\ntls = \"yes\"", `delivery.route[0].tls: "yes" is not one of`},
		{"hostless route without smarthost", "[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"smarthost\"", "delivery.route[0].hosts: empty, and [delivery.smarthost] has no hosts"},
		{"hostless route with own tls", "[delivery.smarthost]\nhosts = [\"s.example:25\"]\n[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"smarthost\"\ntls = \"none\"",
			"delivery.route[0]: a route without hosts uses [delivery.smarthost]"},
		{"route host without port", "[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"smarthost\"\nhosts = [\"10.0.0.1\"]", `delivery.route[0].hosts[0]: "10.0.0.1" is not host:port`},
		{"route user without password", "[[delivery.route]]\ndomains = [\"a.example\"]\nvia = \"smarthost\"\nhosts = [\"10.0.0.1:25\"]\nusername = \"u\"", "delivery.route[0].username: set, but neither"},
		{"zero min backoff", "[retry]\nmin_backoff = \"0s\"", "retry.min_backoff: must be > 0"},
		{"backoff order", "[retry]\nmin_backoff = \"2h\"", "retry.min_backoff: must not exceed retry.max_backoff (2h > 1h)"},
		{"zero lifetime", "[retry]\nmax_queue_lifetime = \"0s\"", "retry.max_queue_lifetime: must be > 0"},
		{"negative delay warning", "[retry]\ndelay_warning = \"-1h\"", "retry.delay_warning: must not be negative"},
		{"delay warning after expiry", "[retry]\ndelay_warning = \"200h\"", "retry.delay_warning: 200h is not less than retry.max_queue_lifetime (120h)"},
		{"admin on all interfaces without token", "[admin]\naddress = \":8025\"", "admin.token: required when admin.address"},
		{"admin bad address", "[admin]\naddress = \"8025\"", "admin.address"},
		{"log format", "[log]\nformat = \"xml\"", `log.format: "xml" is not one of auto, json, console`},
		{"log level", "[log]\nlevel = \"verbose\"", `log.level: "verbose" is not one of trace, debug, info, warn, error`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.file + "\n"))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", c)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tt.want)
			}
		})
	}
}

func TestValidateReportsEveryProblemAtOnce(t *testing.T) {
	c := Default()
	c.Limits.MaxMessageSize = 0
	c.Delivery.MXPort = 0
	c.Log.Level = "loud"
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted three problems")
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 3 {
		t.Fatalf("got %q, want three joined errors", err)
	}
	for _, key := range []string{"limits.max_message_size", "delivery.mx_port", "log.level"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error %q does not name %s", err, key)
		}
	}
}

func TestValidateAcceptsConsistentConfigs(t *testing.T) {
	tests := []struct {
		name string
		file string
	}{
		{"two listeners on port 0", "[[listener]]\naddress = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\""},
		{"submission with users and insecure auth", "[[listener]]\naddress = \"127.0.0.1:587\"\nmode = \"submission\"\nallow_insecure_auth = true\n[[relay.user]]\nname = \"a\"\npassword_hash = '" + testHash + "'"},
		{"smtps and submission with a certificate", "[[listener]]\naddress = \"127.0.0.1:465\"\nmode = \"smtps\"\n[[listener]]\naddress = \"127.0.0.1:587\"\nmode = \"submission\"\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n[[relay.user]]\nname = \"a\"\npassword_hash = '" + testHash + "'"},
		{"hostless route through the smarthost", "[delivery.smarthost]\nhosts = [\"s.example:587\"]\nusername = \"u\"\npassword_env = \"E\"\n[[delivery.route]]\ndomains = [\"*.a.example\"]\nvia = \"smarthost\""},
		{"mx route requiring starttls", "[[delivery.route]]\ndomains = [\"partner.example\"]\nvia = \"mx\"\ntls = \"starttls\""},
		{"admin off", "[admin]\naddress = \"\""},
		{"admin on all interfaces with token", "[admin]\naddress = \"0.0.0.0:8025\"\ntoken = \"t\""},
		{"admin on localhost without token", "[admin]\naddress = \"localhost:8025\""},
		{"delay warnings off", "[retry]\ndelay_warning = \"0s\""},
		{"free disk high at the reserve", "[back_pressure]\nfree_disk_medium = \"40MB\"\nfree_disk_high = \"16MiB\""},
		{"back pressure off and sizes as integers", "[back_pressure]\nenabled = false\nfree_disk_medium = 1000\nfree_disk_high = 0\nmemory_medium = 0.5"},
		{"dns servers with and without port", "[delivery]\ndns_servers = [\"127.0.0.1:5353\", \"::1\"]\nmx_port = 2526"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse([]byte(tt.file + "\n")); err != nil {
				t.Errorf("Parse rejected it: %v", err)
			}
		})
	}
}

func TestValidateCluster(t *testing.T) {
	tests := []struct{ file, want string }{
		{"[cluster]\nredis = \"http://127.0.0.1:6379\"", "cluster.redis:"},
		{"[cluster]\nredis = \"redis://\"", "cluster.redis: \"redis://\" has no host"},
		{"[cluster]\nredis = \"redis://r:6379\"\npassword_file = \"f\"\npassword_env = \"E\"", "cluster.password_file: set password_file or password_env, not both"},
		{"[cluster]\nnode = \"a:b\"", "cluster.node:"},
		{"[cluster]\nname = \"x}\"", "cluster.name:"},
		{"[cluster]\nname = \"\"", "cluster.name: must not be empty"},
		{"[cluster]\nexpected_nodes = 0", "cluster.expected_nodes: must be > 0"},
		{"[cluster]\nlease_ttl = \"1s\"", "cluster.lease_ttl: 1s is below 3s"},
		{"[cluster]\nredis = \"redis://r:6379\"\ntls_ca_file = \"ca.pem\"", "cluster.tls_ca_file: needs a rediss:// URL"},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.file))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err = %v, want %q", tt.file, err, tt.want)
		}
	}
	for _, ok := range []string{"[cluster]\nredis = \"rediss://user@r.example:6380/2\"\nnode = \"n1\"\nexpected_nodes = 3", ""} {
		if _, err := Parse([]byte(ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}
