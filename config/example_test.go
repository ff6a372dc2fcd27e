package config

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

const exampleFile = "../relayq.example.toml"

// exampleKeys are the keys relayq.example.toml sets to example values (its
// comments say "example"); every other key there must equal the default.
var exampleKeys = map[string]bool{
	"hostname":       true,
	"relay.user":     true,
	"delivery.route": true,
	"dkim":           true,
}

func TestExampleFileLoads(t *testing.T) {
	if _, err := Load(exampleFile); err != nil {
		t.Fatalf("Load(%s): %v", exampleFile, err)
	}
}

// The example file documents the defaults; this keeps the two in step.
func TestExampleFileValuesAreTheDefaults(t *testing.T) {
	got, err := Load(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	diffs := diffValues(reflect.ValueOf(*got), reflect.ValueOf(*Default()), "")
	for _, d := range diffs {
		t.Errorf("%s: the example sets a value that is not the default and is not marked as an example key", d)
	}
}

// Every key of Config must appear in the example file, so that it is
// documented there.
func TestExampleFileSetsEveryKey(t *testing.T) {
	data, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		t.Fatal(err)
	}
	for _, key := range missingKeys(reflect.TypeOf(Config{}), doc, "") {
		t.Errorf("relayq.example.toml does not set (and so does not document) %s", key)
	}
}

// diffValues lists the keys under which got and want differ, skipping
// exampleKeys. nil and empty slices are equal: both mean "none".
func diffValues(got, want reflect.Value, prefix string) []string {
	var diffs []string
	t := got.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		key := strings.TrimPrefix(prefix+"."+tomlName(f), ".")
		if exampleKeys[key] {
			continue
		}
		g, w := got.Field(i), want.Field(i)
		switch {
		case f.Anonymous:
			// An embedded struct's keys belong to the table around it.
			diffs = append(diffs, diffValues(g, w, prefix)...)
		case f.Type.Kind() == reflect.Struct:
			diffs = append(diffs, diffValues(g, w, key)...)
		case f.Type.Kind() == reflect.Slice && g.Len() == 0 && w.Len() == 0:
		case !reflect.DeepEqual(g.Interface(), w.Interface()):
			diffs = append(diffs, fmt.Sprintf("%s = %v, default %v", key, g.Interface(), w.Interface()))
		}
	}
	return diffs
}

// missingKeys lists the keys of struct type t absent from the decoded TOML
// table doc. For an array of tables a key counts as present when any of its
// tables sets it.
func missingKeys(t reflect.Type, doc map[string]any, prefix string) []string {
	var missing []string
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			missing = append(missing, missingKeys(f.Type, doc, prefix)...)
			continue
		}
		name := tomlName(f)
		key := strings.TrimPrefix(prefix+"."+name, ".")
		v, ok := doc[name]
		if !ok {
			missing = append(missing, key)
			continue
		}
		switch {
		case f.Type.Kind() == reflect.Struct && !implementsText(f.Type):
			sub, _ := v.(map[string]any)
			missing = append(missing, missingKeys(f.Type, sub, key)...)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			merged := map[string]any{}
			tables, _ := v.([]map[string]any)
			for _, tab := range tables {
				for k, x := range tab {
					merged[k] = x
				}
			}
			missing = append(missing, missingKeys(f.Type.Elem(), merged, key)...)
		}
	}
	return missing
}

func implementsText(t reflect.Type) bool {
	_, ok := reflect.New(t).Interface().(interface{ UnmarshalText([]byte) error })
	return ok
}

func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "" {
		return f.Name
	}
	return name
}

// The comparison above must be able to fail: a changed default is found,
// and example keys are ignored.
func TestDiffValuesFindsChangedDefaults(t *testing.T) {
	c := Default()
	c.Limits.MaxHops = 31
	c.Hostname = "example.invalid"
	c.Delivery.Routes = []Route{{Domains: []string{"a.example"}, Via: ViaMX}}
	diffs := diffValues(reflect.ValueOf(*c), reflect.ValueOf(*Default()), "")
	if len(diffs) != 1 || !strings.HasPrefix(diffs[0], "limits.max_hops = 31") {
		t.Errorf("diffs = %q, want only limits.max_hops", diffs)
	}
}
