package config

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Listener modes (listener.mode).
const (
	ModeRelay      = "relay"      // port 25 style: relay for allowed networks or after AUTH
	ModeSubmission = "submission" // port 587 style: AUTH required (RFC 6409 §4.3)
	ModeSMTPS      = "smtps"      // implicit TLS (RFC 8314 §3.3)
)

// Outbound TLS policies (delivery.smarthost.tls, delivery.route.tls).
const (
	TLSNone          = "none"          // plaintext, STARTTLS never tried
	TLSOpportunistic = "opportunistic" // STARTTLS when offered, plaintext otherwise
	TLSStartTLS      = "starttls"      // STARTTLS required
	TLSImplicit      = "implicit"      // TLS from the first byte (RFC 8314)
)

// Route kinds (delivery.route.via).
const (
	ViaMX        = "mx"
	ViaSmarthost = "smarthost"
)

// Bare CR / bare LF handling inside DATA (limits.bare_line_endings).
const (
	BareLineEndingsNormalize = "normalize" // rewrite to CRLF before queueing
	BareLineEndingsReject    = "reject"    // 550 5.5.2
)

// Log formats (log.format).
const (
	LogFormatAuto    = "auto" // console on a TTY, else json
	LogFormatJSON    = "json"
	LogFormatConsole = "console"
)

// Config is the whole relayq configuration. Field tags are the TOML key
// names of docs/design.md "The configuration contract".
type Config struct {
	Hostname     string       `toml:"hostname"`
	DataDir      string       `toml:"data_dir"`
	Listeners    []Listener   `toml:"listener"`
	TLS          TLS          `toml:"tls"`
	Relay        Relay        `toml:"relay"`
	Limits       Limits       `toml:"limits"`
	BackPressure BackPressure `toml:"back_pressure"`
	Delivery     Delivery     `toml:"delivery"`
	Retry        Retry        `toml:"retry"`
	Admin        Admin        `toml:"admin"`
	Log          Log          `toml:"log"`
	DKIM         []DKIM       `toml:"dkim"` // dkim.go
	Sendmail     Sendmail     `toml:"sendmail"`
	Cluster      Cluster      `toml:"cluster"`
}

// Listener is one inbound SMTP socket ([[listener]]).
type Listener struct {
	Address string `toml:"address"`
	Mode    string `toml:"mode"` // relay | submission | smtps; "" in a file means relay
	// AllowInsecureAuth lets clients AUTH over a plaintext connection; without
	// it AUTH is only offered after STARTTLS (RFC 4954 §4).
	AllowInsecureAuth bool `toml:"allow_insecure_auth"`
}

// TLS is the inbound certificate ([tls]). Without it no STARTTLS is offered
// and no smtps listener can exist.
type TLS struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// Enabled reports whether a certificate is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" && t.KeyFile != "" }

// Relay says who may relay ([relay]).
type Relay struct {
	AllowedNetworks []string `toml:"allowed_networks"`
	Users           []User   `toml:"user"`
}

// User is one AUTH PLAIN/LOGIN account ([[relay.user]]).
type User struct {
	Name         string `toml:"name"`
	PasswordHash string `toml:"password_hash"` // bcrypt
}

// Limits are the inbound limits ([limits]).
type Limits struct {
	MaxMessageSize          Size   `toml:"max_message_size"`           // SIZE (RFC 1870); 552 5.3.4 above it
	MaxRecipients           int    `toml:"max_recipients"`             // 452 4.5.3 above it
	MaxConnections          int    `toml:"max_connections"`            // 421 4.3.2 above it
	MaxConnectionsPerSource int    `toml:"max_connections_per_source"` // 421 4.3.2 above it
	MaxHops                 int    `toml:"max_hops"`                   // Received headers; 554 5.4.6 above it
	BareLineEndings         string `toml:"bare_line_endings"`          // normalize | reject
	// Hourly sending limits (450 4.7.1 beyond); 0 = off. The user limits
	// apply to authenticated sessions, the source limit to every client
	// address (IPv6: its /64).
	MaxMessagesPerHourPerUser   int `toml:"max_messages_per_hour_per_user"`
	MaxMessagesPerHourPerSource int `toml:"max_messages_per_hour_per_source"`
	MaxRecipientsPerHourPerUser int `toml:"max_recipients_per_hour_per_user"`
}

// DiskReserve is the free space the queue always leaves on its volume
// (queue.Options.Reserve): a message that would take free space below it
// is refused with 452 4.3.1, back pressure on or off, so that Pebble keeps
// room to flush, compact and record deliveries. It is not configurable; a
// free-space threshold of back pressure below it could never be reached
// (validateBackPressure).
const DiskReserve = 16 * MiB

// BackPressure are the thresholds of graded back pressure ([back_pressure]).
// "medium" slows intake down, "high" refuses new mail with 452 4.3.1.
type BackPressure struct {
	Enabled             bool    `toml:"enabled"`
	FreeDiskMedium      Size    `toml:"free_disk_medium"`
	FreeDiskHigh        Size    `toml:"free_disk_high"`
	QueueMessagesMedium int     `toml:"queue_messages_medium"`
	QueueMessagesHigh   int     `toml:"queue_messages_high"`
	MemoryMedium        Percent `toml:"memory_medium"`
	MemoryHigh          Percent `toml:"memory_high"`
}

// Delivery is the outbound side ([delivery]).
type Delivery struct {
	DNSServers                   []string  `toml:"dns_servers"` // "ip" or "ip:port"; empty = system resolver
	MXPort                       int       `toml:"mx_port"`
	MaxConnections               int       `toml:"max_connections"`
	MaxConnectionsPerDestination int       `toml:"max_connections_per_destination"`
	Smarthost                    Smarthost `toml:"smarthost"`
	Routes                       []Route   `toml:"route"`

	// MXMaxMessagesPerMinute and MXMaxMessagesPerHour pace every MX
	// destination (MXRate); 0: no limit.
	MXMaxMessagesPerMinute int `toml:"mx_max_messages_per_minute"`
	MXMaxMessagesPerHour   int `toml:"mx_max_messages_per_hour"`
}

// Smarthost is the upstream relay used for every domain no route matches
// ([delivery.smarthost]). No hosts means deliver by MX.
type Smarthost struct {
	Hosts              []string `toml:"hosts"` // host:port, tried in order
	TLS                string   `toml:"tls"`   // none | opportunistic | starttls | implicit
	Username           string   `toml:"username"`
	PasswordFile       string   `toml:"password_file"`
	PasswordEnv        string   `toml:"password_env"`
	InsecureSkipVerify bool     `toml:"insecure_skip_verify"`
	AuthKeys                    // auth, token_file, token_command, token_lifetime
	Rate                        // max_messages_per_minute, max_messages_per_hour
}

// Password returns the AUTH password: the contents of PasswordFile without
// its trailing line break, or the value of the environment variable named
// by PasswordEnv; "" when neither is set.
func (s Smarthost) Password() (string, error) { return password(s.PasswordFile, s.PasswordEnv) }

// Route is a per-domain or per-sender exception to the default delivery
// ([[delivery.route]]).
type Route struct {
	Domains            []string `toml:"domains"` // "example.com" or "*.example.com"
	Via                string   `toml:"via"`     // mx | smarthost
	Hosts              []string `toml:"hosts"`   // via smarthost only; empty = [delivery.smarthost]
	TLS                string   `toml:"tls"`     // "" = default for via
	Username           string   `toml:"username"`
	PasswordFile       string   `toml:"password_file"`
	PasswordEnv        string   `toml:"password_env"`
	InsecureSkipVerify bool     `toml:"insecure_skip_verify"`
	AuthKeys                    // auth, token_file, token_command, token_lifetime
	// Rate paces the route's destination; zero: the smart host's rate
	// (for via = "smarthost" without hosts) or the MX one (via = "mx").
	Rate

	// Senders are envelope senders the route is for: "*@example.com" or
	// "app@example.net", case-insensitive; empty = any sender. A route
	// without domains is for every recipient domain of those senders.
	Senders []string `toml:"senders"`
	// RewriteSender replaces the envelope sender (MAIL FROM) of mail sent
	// by the route, at delivery; "" keeps it. The null sender is never
	// rewritten, and reports still go to the original sender.
	RewriteSender string `toml:"rewrite_sender"`
	// RewriteFrom says what becomes of the From: field when RewriteSender
	// is set: RewriteFromKeep (the default), RewriteFromReplace or
	// RewriteFromReplyTo.
	RewriteFrom string `toml:"rewrite_from"`
}

// Route.rewrite_from values.
const (
	RewriteFromKeep    = "keep"     // From: as sent
	RewriteFromReplace = "replace"  // From: the rewritten address, the display name kept
	RewriteFromReplyTo = "reply-to" // as replace, and the original From: becomes Reply-To: when there is none
)

// Password is Smarthost.Password for the route's own credentials.
func (r Route) Password() (string, error) { return password(r.PasswordFile, r.PasswordEnv) }

// Retry is the retry schedule ([retry]).
type Retry struct {
	MinBackoff       Duration `toml:"min_backoff"`
	MaxBackoff       Duration `toml:"max_backoff"`
	MaxQueueLifetime Duration `toml:"max_queue_lifetime"` // then NDR with 4.4.7
	DelayWarning     Duration `toml:"delay_warning"`      // 0 turns delay DSNs off
}

// Admin is the HTTP admin API ([admin]).
type Admin struct {
	Address string `toml:"address"` // "" turns the admin API off
	Token   string `toml:"token"`   // bearer token; required off loopback
}

// Log configures logging ([log]).
type Log struct {
	Format string `toml:"format"` // auto | json | console
	Level  string `toml:"level"`  // trace | debug | info | warn | error
}

// The defaults of [limits]; relay applies them to the zero fields of its
// Config and Policy too, so each is declared here only.
const (
	DefaultMaxMessageSize = 35 * MB
	DefaultMaxRecipients  = 100
	DefaultMaxConnections = 1000
	// DefaultMaxConnectionsPerSource is Postfix's own
	// smtpd_client_connection_count_limit, above what common clients open
	// to one relay host (Postfix's default_destination_concurrency_limit
	// and Exchange's per-destination limit are 20), so that a LAN's mail
	// server on its defaults is never refused for it.
	DefaultMaxConnectionsPerSource = 50
	DefaultMaxHops                 = 30
)

// The defaults of [delivery] and [retry]; smarthost and retry apply them to
// the zero fields of the worker and of a backoff, so each is declared here
// only.
const (
	// DefaultDeliveryMaxConnections is delivery.max_connections: the
	// outbound connections open at once, all destinations together.
	DefaultDeliveryMaxConnections = 200
	// DefaultMaxConnectionsPerDestination is Exchange's and Postfix's
	// per-destination limit (20), which receivers are sized for.
	DefaultMaxConnectionsPerDestination = 20
	DefaultMinBackoff                   = 5 * time.Minute
	DefaultMaxBackoff                   = time.Hour
	// DefaultMaxQueueLifetime is Exchange's and Postfix's five days.
	DefaultMaxQueueLifetime = 120 * time.Hour
	DefaultDelayWarning     = 4 * time.Hour
)

// Default returns the configuration relayq runs with when no file is given.
// It passes Validate.
func Default() *Config {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return &Config{
		Hostname:  host,
		DataDir:   "./relayq-data",
		Listeners: defaultListeners(),
		Relay:     Relay{AllowedNetworks: defaultNetworks()},
		Limits: Limits{
			MaxMessageSize:          DefaultMaxMessageSize,
			MaxRecipients:           DefaultMaxRecipients,
			MaxConnections:          DefaultMaxConnections,
			MaxConnectionsPerSource: DefaultMaxConnectionsPerSource,
			MaxHops:                 DefaultMaxHops,
			BareLineEndings:         BareLineEndingsNormalize,
			// Only authenticated sessions are users, and they are the
			// only clients that can send from outside allowed_networks:
			// a stolen password gets this much, not a million an hour.
			MaxMessagesPerHourPerUser:   1000,
			MaxRecipientsPerHourPerUser: 5000,
		},
		BackPressure: BackPressure{
			Enabled:             true,
			FreeDiskMedium:      4 * GB,
			FreeDiskHigh:        500 * MB,
			QueueMessagesMedium: 200000,
			QueueMessagesHigh:   500000,
			MemoryMedium:        0.75,
			MemoryHigh:          0.90,
		},
		Delivery: Delivery{
			MXPort:                       25,
			MaxConnections:               DefaultDeliveryMaxConnections,
			MaxConnectionsPerDestination: DefaultMaxConnectionsPerDestination,
			Smarthost: Smarthost{
				TLS:      TLSStartTLS,
				AuthKeys: AuthKeys{Mechanism: AuthPlain, TokenLifetime: Duration(DefaultTokenLifetime)},
			},
		},
		Retry: Retry{
			MinBackoff:       Duration(DefaultMinBackoff),
			MaxBackoff:       Duration(DefaultMaxBackoff),
			MaxQueueLifetime: Duration(DefaultMaxQueueLifetime),
			DelayWarning:     Duration(DefaultDelayWarning),
		},
		Admin:   Admin{Address: "127.0.0.1:8025"},
		Log:     Log{Format: LogFormatAuto, Level: "info"},
		Cluster: defaultCluster(),
	}
}

func defaultListeners() []Listener {
	return []Listener{{Address: "127.0.0.1:2525", Mode: ModeRelay}}
}

func defaultNetworks() []string { return []string{"127.0.0.0/8", "::1/128"} }

// Load reads the TOML file at path over Default() and validates the
// result. Keys the file does not set keep their default; unknown keys are
// an error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse is Load for a document in memory.
func Parse(data []byte) (*Config, error) {
	c := Default()
	// BurntSushi/toml decodes an array into the destination slice's backing
	// array when it is large enough, so a file's [[listener]] would inherit
	// the default listener's fields. Decode the defaulted slices onto nil and
	// put the defaults back only where the file is silent.
	c.Listeners, c.Relay.AllowedNetworks = nil, nil
	md, err := toml.Decode(string(data), c)
	if err != nil {
		return nil, err
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		names := make([]string, len(undecoded))
		for i, k := range undecoded {
			names[i] = k.String()
		}
		return nil, fmt.Errorf("unknown key(s): %s", strings.Join(names, ", "))
	}
	if !md.IsDefined("listener") {
		c.Listeners = defaultListeners()
	}
	if !md.IsDefined("relay", "allowed_networks") {
		c.Relay.AllowedNetworks = defaultNetworks()
	}
	for i := range c.Listeners {
		if c.Listeners[i].Mode == "" {
			c.Listeners[i].Mode = ModeRelay
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func password(file, env string) (string, error) {
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("password_file: %w", err)
		}
		// Only the line break an editor or `echo` adds is removed: spaces
		// may be part of a password.
		p := strings.TrimRight(string(b), "\r\n")
		if p == "" {
			return "", fmt.Errorf("password_file %s is empty", file)
		}
		return p, nil
	case env != "":
		p := os.Getenv(env)
		if p == "" {
			return "", fmt.Errorf("password_env: environment variable %s is not set", env)
		}
		return p, nil
	}
	return "", nil
}
