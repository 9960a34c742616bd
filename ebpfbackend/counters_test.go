package ebpfbackend

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestCounterNames checks that every value of the C enum fw_counter (read
// from the compiled object's BTF, so a counter added to the C shows up
// here) has exactly one name, and that no two counters share one.
func TestCounterNames(t *testing.T) {
	spec, err := loadFw()
	if err != nil {
		t.Fatal(err)
	}
	var enum *btf.Enum
	if err := spec.Types.TypeByName("fw_counter", &enum); err != nil {
		t.Fatalf("enum fw_counter in the object's BTF: %v", err)
	}
	seen := map[string]string{}
	for _, v := range enum.Values {
		if v.Name == "FW_CNT_MAX" {
			if v.Value != uint64(fwFwCounterFW_CNT_MAX) {
				t.Errorf("FW_CNT_MAX = %d in the object, %d in the generated Go", v.Value, fwFwCounterFW_CNT_MAX)
			}
			continue
		}
		name, ok := counterNames[fwFwCounter(v.Value)]
		if !ok || name == "" {
			t.Errorf("counter %s (%d) has no name in counterNames", v.Name, v.Value)
			continue
		}
		if other, dup := seen[name]; dup {
			t.Errorf("counters %s and %s are both named %q", other, v.Name, name)
		}
		seen[name] = v.Name
		if strings.ContainsAny(name, " -") {
			t.Errorf("counter name %q: use snake_case", name)
		}
	}
	if len(counterNames) != len(seen) {
		t.Errorf("counterNames has %d names for %d counters", len(counterNames), len(seen))
	}
}
