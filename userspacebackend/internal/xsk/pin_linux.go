package xsk

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// A pinned shim (ShimOptions.PinDir) is a directory holding one pin per
// map of bpf/xsk_shim.c under the map's name, and the bpf_link as "link".
// The link pin keeps the shim attached when the process dies; the map
// pins keep what the next process needs: the XSKMAP its sockets go into,
// the counters (so the drops made while no process ran are reported), the
// local addresses and the heartbeats.

// ShimLayoutVersion names the meaning of a pinned shim's maps. Bump it
// when a map's contents change meaning without changing its shape (the
// fingerprint catches shape changes by itself).
const ShimLayoutVersion = 1

// ErrIncompatiblePin means a pinned shim's maps do not fit this build's
// program; nothing was changed.
var ErrIncompatiblePin = errors.New("pinned shim has an incompatible layout")

// ErrStalePin means a pinned shim's link no longer serves the interface
// (the interface was removed, or replaced by another of the same name).
var ErrStalePin = errors.New("pinned shim no longer attached to the interface")

const linkPinName = "link"

func linkPinPath(dir string) string { return filepath.Join(dir, linkPinName) }

// hasPinnedShim reports whether dir holds a pinned shim's link.
func hasPinnedShim(dir string) bool {
	_, err := os.Stat(linkPinPath(dir))
	return err == nil
}

// HasPinnedShim reports whether dir holds a pinned shim (its link).
func HasPinnedShim(dir string) bool { return hasPinnedShim(dir) }

// ShimFingerprint hashes the shape of every map of the shim (name, type,
// key and value sizes, flags): a build whose maps differ has another
// fingerprint and must not adopt pins made by this one.
func ShimFingerprint() ([32]byte, error) {
	spec, err := loadXskShim()
	if err != nil {
		return [32]byte{}, fmt.Errorf("load shim spec: %w", err)
	}
	names := make([]string, 0, len(spec.Maps))
	for n := range spec.Maps {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		m := spec.Maps[n]
		fmt.Fprintf(&b, "%s %s %d %d %d\n", n, m.Type, m.KeySize, m.ValueSize, m.Flags)
	}
	return sha256.Sum256([]byte(b.String())), nil
}

// Adoption is a pinned shim checked and loaded by PrepareAdopt, not yet
// taken over: Commit takes it over, Abort leaves it as it was.
type Adoption struct {
	s     *Shim
	l     link.Link
	old   *ebpf.Program
	limit time.Duration
}

// PrepareAdopt checks the shim pinned in opts.PinDir for ifindex (in the
// calling thread's namespace) and loads this build's program over its
// maps (their shapes are checked: ErrIncompatiblePin). A link that no
// longer serves ifindex is ErrStalePin. Nothing pinned changes until
// Commit; several shims can so be checked before any is taken over.
func PrepareAdopt(ifindex int, opts *ShimOptions) (_ *Adoption, err error) {
	o, err := resolveShim(opts)
	if err != nil {
		return nil, err
	}
	if o.PinDir == "" || !hasPinnedShim(o.PinDir) {
		return nil, fmt.Errorf("adopt shim: no pinned shim in %q: %w", o.PinDir, os.ErrNotExist)
	}
	l, err := link.LoadPinnedLink(linkPinPath(o.PinDir), nil)
	if err != nil {
		return nil, fmt.Errorf("adopt shim: open %s: %w", linkPinPath(o.PinDir), err)
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("adopt shim: read %s: %w", linkPinPath(o.PinDir), err)
	}
	if info.Type != link.XDPType {
		return nil, fmt.Errorf("adopt shim: %s is a %v link, not XDP: %w", linkPinPath(o.PinDir), info.Type, ErrIncompatiblePin)
	}
	if got := int(info.XDP().Ifindex); got != ifindex {
		return nil, fmt.Errorf("adopt shim: %s is attached to ifindex %d, the interface is ifindex %d: %w", o.PinDir, got, ifindex, ErrStalePin)
	}
	// The running program is held until the swap is committed.
	old, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil, fmt.Errorf("adopt shim: open the pinned link's program: %w", err)
	}
	s, err := adoptObjects(ifindex, o)
	if err != nil {
		old.Close()
		return nil, err
	}
	return &Adoption{s: s, l: l, old: old, limit: o.HeartbeatLimit}, nil
}

// Abort releases what PrepareAdopt loaded; the pinned shim runs on as it
// was. Safe on nil and after Commit.
func (a *Adoption) Abort() {
	if a == nil || a.s == nil {
		return
	}
	a.s.unmap()
	a.s.objs.Close()
	a.l.Close()
	a.old.Close()
	a.s = nil
}

// Commit moves the pinned link to this build's program in one atomic
// update (no frame meets an unfiltered interface), sets the heartbeat
// limit, clears the ready flags of the previous process's queues (its
// sockets are gone) and returns the shim, now this process's. On error
// the link runs the previous program again and nothing else changed.
func (a *Adoption) Commit() (_ *Shim, err error) {
	if a == nil || a.s == nil {
		return nil, ErrClosed
	}
	s, l := a.s, a.l
	defer func() {
		if err != nil {
			a.Abort()
		}
	}()
	if err := l.Update(s.objs.XskShim); err != nil {
		return nil, fmt.Errorf("adopt shim: move the pinned link to this build's program: %w", err)
	}
	undo := func() { _ = l.Update(a.old) }
	if err := s.setHeartbeatLimit(a.limit); err != nil {
		undo()
		return nil, err
	}
	for q := range s.nq {
		if err := s.objs.Ready.Update(q, uint32(0), ebpf.UpdateAny); err != nil {
			undo()
			return nil, fmt.Errorf("adopt shim: clear ready flag %d: %w", q, err)
		}
	}
	if err := s.loadLocal(); err != nil {
		undo()
		return nil, err
	}
	a.old.Close()
	s.link = l
	s.mode = AttachNative
	if lk, err := netlink.LinkByIndex(s.ifindex); err == nil && lk.Attrs().Xdp != nil && lk.Attrs().Xdp.AttachMode == nl.XDP_ATTACHED_SKB {
		s.mode = AttachGeneric
	}
	a.s = nil
	return s, nil
}

// adoptObjects is loadShimObjects over existing pins, without writing
// anything (the heartbeat limit is Commit's).
func adoptObjects(ifindex int, lo ShimOptions) (*Shim, error) {
	spec, ncpu, err := shimSpec(lo)
	if err != nil {
		return nil, err
	}
	// Loading creates and pins a map whose pin is missing: refuse instead,
	// a missing map is another layout.
	var missing []string
	for name := range spec.Maps {
		if _, err := os.Stat(filepath.Join(lo.PinDir, name)); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("adopt shim: %s has no pinned map %s, which this build's shim uses: %w", lo.PinDir, strings.Join(missing, ", "), ErrIncompatiblePin)
	}
	var objs xskShimObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: lo.PinDir}}); err != nil {
		return nil, fmt.Errorf("adopt shim: load this build's program over the maps pinned in %s: %w: %w", lo.PinDir, ErrIncompatiblePin, err)
	}
	s := &Shim{ifindex: ifindex, nq: lo.MaxQueues, objs: &objs, ncpu: ncpu, pinDir: lo.PinDir,
		queues: map[uint32]bool{}, local: map[xskShimXskLocalKey]bool{}, nat: map[xskShimXskLocalKey]uint8{}}
	if err := s.mapMemory(); err != nil {
		objs.Close()
		return nil, err
	}
	return s, nil
}

// loadLocal reads the pinned local-address and NAT-address maps into
// s.local and s.nat, so that SetLocalAddrs and SetNATAddrs replace what
// the previous process set.
func (s *Shim) loadLocal() error {
	var k xskShimXskLocalKey
	var v uint8
	it := s.objs.LocalAddrs.Iterate()
	for it.Next(&k, &v) {
		s.local[k] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("adopt shim: read local addresses: %w", err)
	}
	it = s.objs.NatAddrs.Iterate()
	for it.Next(&k, &v) {
		s.nat[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("adopt shim: read NAT addresses: %w", err)
	}
	return nil
}

// RemovePinnedShim removes a pinned shim: the link pin first (the shim
// detaches once no process holds the link), then every map pin, then the
// directory. A directory that does not exist is not an error.
func RemovePinnedShim(dir string) error {
	var errs []error
	if err := os.Remove(linkPinPath(dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("unpin %s: %w", linkPinPath(dir), err))
	}
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", p, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
