package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const testdata = "../testdata/config"

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestEmptyFileGivesDefaults(t *testing.T) {
	c, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Parse(empty) = %+v\nwant Default() = %+v", c, Default())
	}
}

func TestLoadMinimalKeepsDefaultsForUnsetKeys(t *testing.T) {
	c, err := Load(filepath.Join(testdata, "minimal.toml"))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.DataDir = "/var/spool/relayq"
	want.Delivery.Smarthost.Hosts = []string{"smtp.isp.example:587"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load(minimal.toml) = %+v\nwant %+v", c, want)
	}
}

func TestFileListenersReplaceTheDefaultListener(t *testing.T) {
	c, err := Parse([]byte(`
[[listener]]
address = "0.0.0.0:25"

[[listener]]
address = "127.0.0.1:2587"
mode = "relay"
allow_insecure_auth = true
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Listener{
		{Address: "0.0.0.0:25", Mode: ModeRelay}, // a missing mode means relay
		{Address: "127.0.0.1:2587", Mode: ModeRelay, AllowInsecureAuth: true},
	}
	if !reflect.DeepEqual(c.Listeners, want) {
		t.Errorf("listeners = %+v, want %+v", c.Listeners, want)
	}
}

// The TOML decoder reuses a destination slice's elements; a file listener
// must not pick up the default listener's address that way.
func TestFileListenerDoesNotInheritDefaultAddress(t *testing.T) {
	_, err := Parse([]byte("[[listener]]\nmode = \"relay\"\n"))
	if err == nil || !strings.Contains(err.Error(), "listener[0].address") {
		t.Fatalf("got %v, want an error about listener[0].address", err)
	}
}

func TestBackPressureEnabledKeepsDefaultWhenAbsent(t *testing.T) {
	tests := []struct {
		name string
		file string
		want bool
	}{
		{"section absent", ``, true},
		{"section without the key", "[back_pressure]\nfree_disk_high = \"1GB\"\n", true},
		{"explicit false", "[back_pressure]\nenabled = false\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if c.BackPressure.Enabled != tt.want {
				t.Errorf("enabled = %v, want %v", c.BackPressure.Enabled, tt.want)
			}
		})
	}
}

func TestEmptyAllowedNetworksRelaysForNobody(t *testing.T) {
	c, err := Parse([]byte("[relay]\nallowed_networks = []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Relay.AllowedNetworks) != 0 || len(c.Relay.Networks()) != 0 {
		t.Errorf("allowed networks = %v, want none", c.Relay.AllowedNetworks)
	}
	c, err = Parse([]byte("[relay]\nallowed_networks = [\"10.0.0.0/8\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.0/8"}; !slices.Equal(c.Relay.AllowedNetworks, want) {
		t.Errorf("allowed networks = %v, want %v (the file's list replaces the default)", c.Relay.AllowedNetworks, want)
	}
}

func TestBadFilesErrorNamesTheKey(t *testing.T) {
	tests := []struct {
		file string
		want []string
	}{
		{"bad-size.toml", []string{"limits.max_message_size", "35XB"}},
		{"bad-network.toml", []string{`relay.allowed_networks[2]: "10.0.0.0/33" is not a network`}},
		{"bad-unknown-key.toml", []string{"unknown key", "limits.max_msg_size"}},
		{"bad-mode.toml", []string{`listener[1].mode: "foo" is not one of relay, submission, smtps`}},
		{"bad-duration.toml", []string{"retry.min_backoff", `"300"`}},
		{"bad-smtps-without-tls.toml", []string{"listener[0].mode", "[tls]"}},
		{"bad-backoff-order.toml", []string{"retry.min_backoff: must not exceed retry.max_backoff"}},
		{"bad-route.toml", []string{`delivery.route[0].via: "carrier-pigeon" is not one of mx, smarthost`}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join(testdata, tt.file)
			c, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%s) = %+v, want an error", tt.file, c)
			}
			for _, w := range append([]string{path}, tt.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadMissingFileFails(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.toml")); !os.IsNotExist(err) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

func TestNetworksTreatsBareAddressAsHostPrefix(t *testing.T) {
	r := Relay{AllowedNetworks: []string{"127.0.0.1", "::1", "10.1.2.3/8", "2001:db8::/32", "not-a-net"}}
	want := []netip.Prefix{
		netip.MustParsePrefix("127.0.0.1/32"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8::/32"),
	}
	if got := r.Networks(); !slices.Equal(got, want) {
		t.Errorf("Networks() = %v, want %v", got, want)
	}
}

func TestDNSServerAddrsAddsPort53(t *testing.T) {
	d := Delivery{DNSServers: []string{"127.0.0.1:5353", "192.0.2.1", "::1", "[2001:db8::1]:54"}}
	want := []string{"127.0.0.1:5353", "192.0.2.1:53", "[::1]:53", "[2001:db8::1]:54"}
	if got := d.DNSServerAddrs(); !slices.Equal(got, want) {
		t.Errorf("DNSServerAddrs() = %v, want %v", got, want)
	}
}

func TestRouteMatches(t *testing.T) {
	r := Route{Domains: []string{"lan.example", "*.corp.example"}}
	tests := []struct {
		domain string
		want   bool
	}{
		{"lan.example", true},
		{"LAN.Example.", true},
		{"host.lan.example", false}, // no wildcard for lan.example
		{"corp.example", false},     // *.corp.example is below it only
		{"a.corp.example", true},
		{"a.b.corp.example", true},
		{"xcorp.example", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.domain, func(t *testing.T) {
			if got := r.Matches(tt.domain); got != tt.want {
				t.Errorf("Matches(%q) = %v, want %v", tt.domain, got, tt.want)
			}
		})
	}
}

func TestRouteForResolvesFirstMatchAndDefaults(t *testing.T) {
	smarthost := Smarthost{Hosts: []string{"smtp.isp.example:587"}, TLS: TLSImplicit, Username: "u", PasswordEnv: "P"}
	routes := []Route{
		{Domains: []string{"lan.example"}, Via: ViaSmarthost, Hosts: []string{"10.1.1.5:25"}, TLS: TLSNone},
		{Domains: []string{"lan.example", "partner.example"}, Via: ViaMX, TLS: TLSStartTLS},
		{Domains: []string{"*.mx.example"}, Via: ViaMX},
		{Domains: []string{"isp.example"}, Via: ViaSmarthost},
		{Domains: []string{"own-tls.example"}, Via: ViaSmarthost, Hosts: []string{"10.1.1.6:587"}},
	}
	tests := []struct {
		name      string
		smarthost Smarthost
		domain    string
		want      Route
	}{
		{"first match wins", smarthost, "lan.example",
			Route{Domains: []string{"lan.example"}, Via: ViaSmarthost, Hosts: []string{"10.1.1.5:25"}, TLS: TLSNone, RewriteFrom: RewriteFromKeep}},
		{"mx route keeps its tls", smarthost, "partner.example",
			Route{Domains: []string{"lan.example", "partner.example"}, Via: ViaMX, TLS: TLSStartTLS, RewriteFrom: RewriteFromKeep}},
		{"mx route defaults to opportunistic tls", smarthost, "a.mx.example",
			Route{Domains: []string{"*.mx.example"}, Via: ViaMX, TLS: TLSOpportunistic, RewriteFrom: RewriteFromKeep}},
		{"hostless smarthost route takes the smarthost", smarthost, "isp.example",
			Route{Domains: []string{"isp.example"}, Via: ViaSmarthost, Hosts: smarthost.Hosts, TLS: TLSImplicit, Username: "u", PasswordEnv: "P", RewriteFrom: RewriteFromKeep}},
		{"route with hosts defaults to the smarthost tls", smarthost, "own-tls.example",
			Route{Domains: []string{"own-tls.example"}, Via: ViaSmarthost, Hosts: []string{"10.1.1.6:587"}, TLS: TLSImplicit, RewriteFrom: RewriteFromKeep}},
		{"no match with smarthost hosts", smarthost, "elsewhere.example",
			Route{Via: ViaSmarthost, Hosts: smarthost.Hosts, TLS: TLSImplicit, Username: "u", PasswordEnv: "P", RewriteFrom: RewriteFromKeep}},
		{"no match without smarthost hosts", Smarthost{TLS: TLSStartTLS}, "elsewhere.example",
			Route{Via: ViaMX, TLS: TLSOpportunistic, RewriteFrom: RewriteFromKeep}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Delivery{Smarthost: tt.smarthost, Routes: routes}
			if got := d.RouteFor("", tt.domain); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("RouteFor(\"\", %q) = %+v\nwant %+v", tt.domain, got, tt.want)
			}
		})
	}
}

// Routes by sender: "*@domain" and exact addresses, case-insensitive,
// with or without domains; the first match wins; the null sender matches
// no sender route.
func TestRouteForMatchesSenders(t *testing.T) {
	d := Delivery{Routes: []Route{
		{Senders: []string{"*@Sales.Example", "app@example.net"}, Domains: []string{"partner.example"}, Via: ViaSmarthost, Hosts: []string{"p.example:25"}},
		{Senders: []string{"*@sales.example."}, Via: ViaSmarthost, Hosts: []string{"sales.example:587"}, RewriteSender: "relay@sales.example", RewriteFrom: RewriteFromReplyTo},
		{Senders: []string{"app@example.net"}, Via: ViaSmarthost, Hosts: []string{"app.example:587"}},
		{Domains: []string{"partner.example"}, Via: ViaMX},
	}}
	tests := []struct {
		sender, domain, wantHost string
		wantClass                string
	}{
		{"bob@sales.example", "partner.example", "p.example:25", "0,1,"},
		{"Bob@SALES.example", "other.example", "sales.example:587", "0,1,"},
		{"APP@example.net", "partner.example", "p.example:25", "0,2,"},
		{"app@example.net", "other.example", "app.example:587", "0,2,"},
		{"other@example.net", "other.example", "", ""},
		{"bob@sub.sales.example", "other.example", "", ""}, // *@domain is that domain only
		{"", "other.example", "", ""},                      // the null sender
		{"", "partner.example", "", ""},                    // ... falls to the domain route (MX)
	}
	for _, tt := range tests {
		got := d.RouteFor(tt.sender, tt.domain)
		host := ""
		if len(got.Hosts) > 0 {
			host = got.Hosts[0]
		}
		if host != tt.wantHost {
			t.Errorf("RouteFor(%q, %q) goes to %q, want %q", tt.sender, tt.domain, host, tt.wantHost)
		}
		if c := d.SenderClass(tt.sender); c != tt.wantClass {
			t.Errorf("SenderClass(%q) = %q, want %q", tt.sender, c, tt.wantClass)
		}
	}
	if r := d.RouteFor("bob@sales.example", "other.example"); r.RewriteSender != "relay@sales.example" || r.RewriteFrom != RewriteFromReplyTo {
		t.Errorf("sales route = %+v, want its rewriting", r)
	}
}

func TestPasswordComesFromFileOrEnvironment(t *testing.T) {
	dir := t.TempDir()
	withNewline := filepath.Join(dir, "pw")
	if err := os.WriteFile(withNewline, []byte(" s3cret \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("RELAYQ_TEST_PASSWORD", "from-env")
	tests := []struct {
		name    string
		s       Smarthost
		want    string
		wantErr string
	}{
		{"file loses only its line break", Smarthost{PasswordFile: withNewline}, " s3cret ", ""},
		{"environment variable", Smarthost{PasswordEnv: "RELAYQ_TEST_PASSWORD"}, "from-env", ""},
		{"neither", Smarthost{}, "", ""},
		{"missing file", Smarthost{PasswordFile: filepath.Join(dir, "nope")}, "", "password_file"},
		{"empty file", Smarthost{PasswordFile: empty}, "", "is empty"},
		{"unset variable", Smarthost{PasswordEnv: "RELAYQ_TEST_UNSET_PASSWORD"}, "", "RELAYQ_TEST_UNSET_PASSWORD is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.s.Password()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Password() = %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Password() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	r := Route{PasswordEnv: "RELAYQ_TEST_PASSWORD"}
	if got, err := r.Password(); err != nil || got != "from-env" {
		t.Errorf("Route.Password() = %q, %v; want from-env", got, err)
	}
}
