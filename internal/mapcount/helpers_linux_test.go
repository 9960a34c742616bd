//go:build linux

package mapcount

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
)

// newMap creates a map that is closed when the test ends.
func newMap(tb testing.TB, spec *ebpf.MapSpec) *ebpf.Map {
	tb.Helper()
	m, err := ebpf.NewMap(spec)
	if err != nil {
		tb.Fatalf("create %s map: %v", spec.Type, err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// testKey writes the key for entry i: the index in the first 8 bytes, the
// rest zero (hash and LRU maps take any bytes).
func testKey(dst []byte, i uint64) { binary.LittleEndian.PutUint64(dst, i) }

// fill inserts entries first..first+n-1 with BatchUpdate, in chunks.
func fill(tb testing.TB, m *ebpf.Map, first, n uint64) {
	tb.Helper()
	ks, vs := int(m.KeySize()), int(m.ValueSize())
	copies := 1
	if perCPU(m.Type()) {
		c, err := ebpf.PossibleCPU()
		if err != nil {
			tb.Fatal(err)
		}
		copies, vs = c, (vs+7)&^7
	}
	const chunk = 1 << 16
	keys := make([]byte, chunk*ks)
	vals := make([]byte, chunk*vs*copies)
	for done := uint64(0); done < n; {
		c := min(n-done, chunk)
		for j := uint64(0); j < c; j++ {
			testKey(keys[int(j)*ks:], first+done+j)
		}
		// []byte is not a slice of elements to cilium/ebpf: hand it the
		// same reflect-built element slices Batch uses.
		kk, vv := elemSlices(keys[:int(c)*ks], ks), elemSlices(vals[:int(c)*vs*copies], vs)
		got, err := m.BatchUpdate(kk, vv, nil)
		if err != nil {
			tb.Fatalf("fill %s map at %d: %v", m.Type(), first+done, err)
		}
		if uint64(got) != c {
			tb.Fatalf("fill %s map: batch update wrote %d of %d", m.Type(), got, c)
		}
		done += c
	}
}

// iterateCount counts with cilium/ebpf's own Map.Iterate (next key plus a
// value lookup per entry): the reference every method is compared with.
func iterateCount(tb testing.TB, m *ebpf.Map) uint64 {
	tb.Helper()
	var n uint64
	it := m.Iterate()
	var k []byte
	if perCPU(m.Type()) {
		var v [][]byte
		for it.Next(&k, &v) {
			n++
		}
	} else {
		var v []byte
		for it.Next(&k, &v) {
			n++
		}
	}
	if err := it.Err(); err != nil {
		tb.Fatalf("iterate %s map: %v", m.Type(), err)
	}
	return n
}

func testMapID(tb testing.TB, m *ebpf.Map) ebpf.MapID {
	tb.Helper()
	// Through cilium/ebpf, to cross-check the package's own mapID.
	info, err := m.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		tb.Fatal("map has no id")
	}
	own, err := mapID(m)
	if err != nil || own != id {
		tb.Fatalf("mapID = %d, %v; cilium/ebpf says %d", own, err, id)
	}
	return id
}

func errorsIsNotSupported(err error) bool { return errors.Is(err, ebpf.ErrNotSupported) }

// elemSlices views buf as a slice of [size]byte elements, the shape
// cilium/ebpf's batch calls count by and pass to the kernel without copying.
func elemSlices(buf []byte, size int) any {
	n := len(buf) / size
	arr := reflect.ArrayOf(size, reflect.TypeFor[byte]())
	if n == 0 {
		return reflect.MakeSlice(reflect.SliceOf(arr), 0, 0).Interface()
	}
	return reflect.SliceAt(arr, unsafe.Pointer(unsafe.SliceData(buf)), n).Interface()
}
