package dptest

import (
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwplane/fwplane/dataplane"
)

// configLeaves lists the JSON paths of every leaf field of t: structs are
// walked, slices of structs become "name[]", everything else (strings,
// numbers, lists of scalars, types with their own JSON form) is a leaf.
func configLeaves(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := prefix + name
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct && !leafType(ft):
			out = append(out, configLeaves(ft, path+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && !leafType(ft.Elem()):
			out = append(out, configLeaves(ft.Elem(), path+"[].")...)
		default:
			out = append(out, path)
		}
	}
	return out
}

// leafType: a struct with its own JSON encoding is a value, not a section.
func leafType(t reflect.Type) bool {
	return reflect.PointerTo(t).Implements(reflect.TypeFor[interface{ UnmarshalJSON([]byte) error }]())
}

// TestFieldsCoverConfig: every field of dataplane.Config has an entry in
// Fields (a new field must say what each backend does with it), and every
// entry is a field.
func TestFieldsCoverConfig(t *testing.T) {
	want := configLeaves(reflect.TypeFor[dataplane.Config](), "")
	var got []string
	for _, f := range Fields {
		got = append(got, f.Path)
	}
	sort.Strings(want)
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Fields vs dataplane.Config (-config +table):\n%s", diff)
	}
	for _, f := range Fields {
		for _, m := range []dataplane.Mode{dataplane.ModeEBPF, dataplane.ModeUserspace} {
			if w := f.WantOn(m); (w == Label || w == Ignored || w == Tuning || w == Pending) && f.Note == "" {
				t.Errorf("%s is %s on %s without a note saying why", f.Path, w, m)
			}
		}
	}
}
