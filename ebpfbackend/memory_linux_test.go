package ebpfbackend

import (
	"reflect"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/testutil"
)

// TestMemoryCostMatchesKernel loads the collection (nothing attached) and
// compares MemoryCost with what the kernel accounts for every map (the
// memlock figure of its fdinfo, kernel 6.4+), for two session sizes.
func TestMemoryCostMatchesKernel(t *testing.T) {
	testutil.Privileged(t, testutil.NeedBPF)
	for _, capacity := range []uint32{1024, 100_000} {
		cfg := &dataplane.Config{Tables: dataplane.Tables{Sessions: capacity}}
		cost, err := MemoryCost(cfg)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := load(capacity, "")
		if err != nil {
			t.Fatal(err)
		}
		kernel := map[string]uint64{}
		v := reflect.ValueOf(objs.fwMaps)
		for i := range v.NumField() {
			m := v.Field(i).Interface().(*ebpf.Map)
			info, err := m.Info()
			if err != nil {
				objs.Close()
				t.Fatal(err)
			}
			ml, ok := info.Memlock()
			if !ok {
				objs.Close()
				t.Skipf("kernel reports no memlock for %s", info.Name)
			}
			kernel[v.Type().Field(i).Tag.Get("ebpf")] = ml
		}
		objs.Close()
		var est, got uint64
		for _, p := range cost.Parts {
			k, ok := kernel[p.Name]
			if !ok {
				continue // not a map of the collection (e.g. the stage queues)
			}
			est += p.Bytes
			got += k
			if diff := int64(p.Bytes) - int64(k); diff < -int64(k)/100 || diff > int64(k)/100 {
				t.Errorf("capacity %d, %s: estimated %d B (%s), the kernel accounts %d", capacity, p.Name, p.Bytes, p.Detail, k)
			}
			delete(kernel, p.Name)
		}
		for n := range kernel {
			t.Errorf("map %s has no part in MemoryCost", n)
		}
		t.Logf("capacity %d: estimated %d B, kernel %d B", capacity, est, got)
	}
}
