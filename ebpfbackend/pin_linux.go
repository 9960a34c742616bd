package ebpfbackend

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/internal/pindir"
)

// A dataplane that outlives its process (Options.PinDir): every map is
// pinned as PinDir/<map name>, every interface's link as
// PinDir/links/<interface>, and a meta map (PinDir/fw_meta) says which
// layout the pins have, the generation in force and the zone ids. A
// process that dies leaves the kernel enforcing the last config with its
// sessions, which the in-kernel sweep keeps expiring; the next New with the
// same PinDir adopts it.

// layoutVersion names the meaning of the pinned maps. Bump it when a map's
// contents change meaning without changing its shape (the fingerprint below
// catches shape changes by itself). A test build overrides it through
// testLayoutVersion to simulate an upgrade.
const layoutVersion = 1

var testLayoutVersion uint32

func currentLayoutVersion() uint32 {
	if testLayoutVersion != 0 {
		return testLayoutVersion
	}
	return layoutVersion
}

// ErrIncompatiblePin means a pinned dataplane was found whose layout this
// build cannot adopt; the error says what differs. Nothing was changed.
var ErrIncompatiblePin = errors.New("pinned dataplane has an incompatible layout")

// pinMeta is the value of the fw_meta map.
type pinMeta struct {
	Version     uint32
	Capacity    uint32
	Fingerprint [32]byte
	Generation  uint64
	// ZoneNames[id] is the name of zone id (empty: unused).
	ZoneNames [maxZones][64]byte
}

const metaName = "fw_meta"

// layoutFingerprint hashes the shape of every map of the program (name,
// type, key and value sizes, flags, the size of everything but the session
// tables and the per-CPU rings), so that a build whose maps differ from the
// pinned ones refuses to adopt them.
func layoutFingerprint(spec *ebpf.CollectionSpec) [32]byte {
	names := make([]string, 0, len(spec.Maps))
	for n := range spec.Maps {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		m := spec.Maps[n]
		size := m.MaxEntries
		if strings.HasPrefix(n, "fw_sessions_") || strings.HasPrefix(n, "fw_recent_") {
			size = 0 // configured per dataplane or host
		}
		fmt.Fprintf(&b, "%s %s %d %d %d %d\n", n, m.Type, m.KeySize, m.ValueSize, m.Flags, size)
	}
	return sha256.Sum256([]byte(b.String()))
}

// userspaceMetaName is the userspace backend's meta pin: a directory
// holding it is that backend's, never this one's.
const userspaceMetaName = "xsk_meta"

func metaPath(dir string) string   { return filepath.Join(dir, metaName) }
func linksDir(dir string) string   { return filepath.Join(dir, "links") }
func linkPin(dir, n string) string { return filepath.Join(linksDir(dir), n) }

// HasPinned reports whether dir holds a pinned eBPF dataplane.
func HasPinned(dir string) bool { return hasPinnedDataplane(dir) }

// hasPinnedDataplane reports whether dir holds a dataplane to adopt.
func hasPinnedDataplane(dir string) bool {
	_, err := os.Stat(metaPath(dir))
	return err == nil
}

// readMeta loads the pinned meta map's value.
func readMeta(dir string) (pinMeta, *ebpf.Map, error) {
	var m pinMeta
	mm, err := ebpf.LoadPinnedMap(metaPath(dir), nil)
	if err != nil {
		return m, nil, fmt.Errorf("open %s: %w", metaPath(dir), err)
	}
	if mm.ValueSize() != uint32(binarySize(m)) {
		mm.Close()
		return m, nil, fmt.Errorf("%w: meta value of %d bytes, this build writes %d", ErrIncompatiblePin, mm.ValueSize(), binarySize(m))
	}
	if err := mm.Lookup(uint32(0), &m); err != nil {
		mm.Close()
		return m, nil, fmt.Errorf("read %s: %w", metaPath(dir), err)
	}
	return m, mm, nil
}

func binarySize(m pinMeta) int { return 4 + 4 + 32 + 8 + maxZones*64 }

// newMeta creates (or opens) the pinned meta map.
func newMeta(dir string) (*ebpf.Map, error) {
	spec := &ebpf.MapSpec{Name: metaName, Type: ebpf.Array, KeySize: 4, ValueSize: uint32(binarySize(pinMeta{})), MaxEntries: 1, Pinning: ebpf.PinByName}
	return ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: dir})
}

func (b *Backend) writeMeta() error {
	if b.meta == nil {
		return nil
	}
	m := pinMeta{Version: currentLayoutVersion(), Capacity: b.capacity, Fingerprint: b.fingerprint, Generation: b.gen}
	for name, id := range b.zones {
		if int(id) < len(m.ZoneNames) {
			copy(m.ZoneNames[id][:], name)
		}
	}
	if err := b.meta.Update(uint32(0), &m, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write %s: %w", metaPath(b.opts.PinDir), err)
	}
	return nil
}

// adopt takes over the dataplane pinned in b.opts.PinDir: checks its
// layout, loads this build's programs over the pinned maps, moves every
// pinned link to the new programs (an atomic swap: no packet goes
// unfiltered) and restores what Apply needs (generation, slot, zone ids,
// attachments). Mirroring is reprogrammed by the next Apply. On error
// nothing that was pinned has changed.
func (b *Backend) adopt() (err error) {
	dir := b.opts.PinDir
	meta, mm, err := readMeta(dir)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			mm.Close()
		}
	}()
	spec, err := loadFw()
	if err != nil {
		return fmt.Errorf("load program spec: %w", err)
	}
	fp := layoutFingerprint(spec)
	var diffs []string
	if meta.Version != currentLayoutVersion() {
		diffs = append(diffs, fmt.Sprintf("layout version %d pinned, %d in this build", meta.Version, currentLayoutVersion()))
	}
	if meta.Fingerprint != fp {
		diffs = append(diffs, "map shapes differ (types, key or value sizes)")
	}
	if len(diffs) > 0 {
		return fmt.Errorf("adopt %s: %w: %s; remove it (fwd --remove, or Close) or run the build that made it, or set ReplaceIncompatible to replace it (its sessions are lost)",
			dir, ErrIncompatiblePin, strings.Join(diffs, "; "))
	}
	objs, err := load(meta.Capacity, dir)
	if err != nil {
		return fmt.Errorf("adopt %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			objs.Close()
		}
	}()
	var active uint32
	if err := objs.FwActive.Lookup(uint32(0), &active); err != nil {
		return fmt.Errorf("adopt %s: read the active slot: %w", dir, err)
	}
	attached, err := b.adoptLinks(objs)
	if err != nil {
		return fmt.Errorf("adopt %s: %w", dir, err)
	}
	zones := map[string]uint32{}
	for id, raw := range meta.ZoneNames {
		if n := string(bytes.TrimRight(raw[:], "\x00")); n != "" {
			zones[n] = uint32(id)
		}
	}
	// Mirroring starts afresh with the next Apply: its rules name the old
	// process's program in devmap and cpumap entries, and its Go state is
	// gone. Until then nothing is mirrored; primary traffic is untouched.
	if err := clearMirrorMaps(objs); err != nil {
		for _, a := range attached {
			a.link.Close()
		}
		return fmt.Errorf("adopt %s: %w", dir, err)
	}
	if err := armSweep(objs); err != nil {
		for _, a := range attached {
			a.link.Close()
		}
		return fmt.Errorf("adopt %s: %w", dir, err)
	}
	b.mu.Lock()
	b.objs, b.capacity, b.meta, b.fingerprint = objs, meta.Capacity, mm, fp
	b.activeTag, b.slot, b.gen, b.zones = active, active&1, meta.Generation, zones
	for _, a := range attached {
		b.attached[a.name] = a.att
	}
	// The NAT rules are the next Apply's to name, but their epoch goes
	// on from the running one, so that sessions made under the old rules
	// are never named after new rules that reuse their numbers.
	var set fwFwSettings
	if objs.FwSettingsMap.Lookup(b.slot, &set) == nil {
		b.nat.epoch = set.NatEpoch
	}
	b.adopted = true
	b.mu.Unlock()
	if outer, inner, gerr := newGraceMaps(); gerr == nil {
		b.grace, b.graceInner = outer, inner
	}
	return nil
}

type namedAttachment struct {
	name string
	att  *attachment
	link link.Link
}

// adoptLinks opens every pinned link, checks its interface still exists,
// and swaps its program for this build's (xdp_fw or tc_fw). A failure
// puts back the programs already swapped.
func (b *Backend) adoptLinks(objs *fwObjects) ([]namedAttachment, error) {
	ents, err := os.ReadDir(linksDir(b.opts.PinDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var out []namedAttachment
	var undo []func()
	var olds []*ebpf.Program
	fail := func(err error) ([]namedAttachment, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		for _, p := range olds {
			p.Close()
		}
		for _, a := range out {
			a.link.Close()
		}
		return nil, err
	}
	for _, e := range ents {
		name := e.Name()
		l, err := link.LoadPinnedLink(linkPin(b.opts.PinDir, name), nil)
		if err != nil {
			return fail(fmt.Errorf("open pinned link of %s: %w", name, err))
		}
		info, err := l.Info()
		if err != nil {
			l.Close()
			return fail(fmt.Errorf("read pinned link of %s: %w", name, err))
		}
		old, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			l.Close()
			return fail(fmt.Errorf("open the program of %s's link: %w", name, err))
		}
		att := &attachment{link: l, reason: "adopted from the pinned dataplane"}
		prog := objs.XdpFw
		switch info.Type {
		case link.XDPType:
			att.ifindex = int(info.XDP().Ifindex)
			att.mode = dataplane.AttachedXDP
			var generic bool
			_ = netnsutil.Do(b.opts.NetNS, func() error {
				if lk, err := netlink.LinkByIndex(att.ifindex); err == nil && lk.Attrs().Xdp != nil {
					generic = lk.Attrs().Xdp.AttachMode == nl.XDP_ATTACHED_SKB
				}
				return nil
			})
			if generic {
				att.mode, att.generic = dataplane.AttachedXDPGeneric, true
			}
		case link.TCXType:
			att.ifindex = int(info.TCX().Ifindex)
			att.mode = dataplane.AttachedTC
			prog = objs.TcFw
		default:
			l.Close()
			old.Close()
			return fail(fmt.Errorf("pinned link of %s is a %v link, not XDP or tcx", name, info.Type))
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			old.Close()
			return fail(fmt.Errorf("move %s to this build's program: %w", name, err))
		}
		undo = append(undo, func() { _ = l.Update(old) })
		olds = append(olds, old)
		out = append(out, namedAttachment{name: name, att: att, link: l})
	}
	// Committed: the old programs go with their last reference.
	for _, p := range olds {
		p.Close()
	}
	return out, nil
}

// clearMirrorMaps empties port mirroring's maps (see adopt).
func clearMirrorMaps(objs *fwObjects) error {
	if err := objs.FwMirrorOn.Update(uint32(0), uint32(0), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("turn mirroring off: %w", err)
	}
	for c := uint32(0); c < objs.FwStageCpu.MaxEntries(); c++ {
		_ = objs.FwStageCpu.Update(c, uint32(0), ebpf.UpdateAny)
	}
	for _, m := range []*ebpf.Map{objs.FwMirrorRules, objs.FwMirrorOut, objs.FwMirrorPairs} {
		if err := deleteAll(m); err != nil {
			return fmt.Errorf("clear %s: %w", m, err)
		}
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	zero := make([]fwFwMirrorStats, cpus)
	for i := uint32(0); i < objs.FwMirrorCounts.MaxEntries(); i++ {
		if err := objs.FwMirrorCounts.Update(i, zero, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("reset mirror counters: %w", err)
		}
	}
	return nil
}

// deleteAll deletes every key of a hash map (the keys are collected
// first: deleting under a next-key walk restarts it).
func deleteAll(m *ebpf.Map) error {
	var keys [][]byte
	k := make([]byte, m.KeySize())
	var v []byte
	if m.Type() != ebpf.HashOfMaps {
		v = make([]byte, m.ValueSize())
	}
	it := m.Iterate()
	for {
		var ok bool
		if v != nil {
			ok = it.Next(&k, &v)
		} else {
			var id ebpf.MapID
			ok = it.Next(&k, &id)
		}
		if !ok {
			break
		}
		keys = append(keys, slices.Clone(k))
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// pinLink pins a new attachment's link; called under applyMu.
func (b *Backend) pinLink(name string, a *attachment) error {
	if b.opts.PinDir == "" {
		return nil
	}
	if err := os.MkdirAll(linksDir(b.opts.PinDir), 0o700); err != nil {
		return fmt.Errorf("make %s: %w", linksDir(b.opts.PinDir), err)
	}
	p := linkPin(b.opts.PinDir, name)
	// A pin left by an interface of the same name that was replaced.
	_ = os.Remove(p)
	if err := a.link.Pin(p); err != nil {
		return fmt.Errorf("pin the link of %s: %w", name, err)
	}
	return nil
}

// detach removes an attachment: unpinned first, so closing it detaches.
func (a *attachment) detach() error {
	if a.pinned() {
		if err := a.link.Unpin(); err != nil {
			return err
		}
	}
	return a.link.Close()
}

func (a *attachment) pinned() bool {
	type pinnable interface{ IsPinned() bool }
	p, ok := a.link.(pinnable)
	return ok && p.IsPinned()
}

// RemovePinned removes a pinned eBPF dataplane that no process holds (an
// orphan left by `fwd --keep-dataplane` or a crash): it unpins and so
// detaches every link, and removes the maps' pins and the directory. The
// interfaces then carry no program of the dataplane. A directory a live
// backend holds is refused (dataplane.ErrPinnedInUse, naming its pid); one
// without a pinned dataplane is an error wrapping os.ErrNotExist.
func RemovePinned(dir string) error {
	if !hasPinnedDataplane(dir) {
		return fmt.Errorf("no pinned eBPF dataplane in %s: %w", dir, os.ErrNotExist)
	}
	lock, err := pindir.Acquire(dir)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	return removePins(dir)
}

// removePins unpins everything under dir that is a BPF pin, links first
// (so no program runs on maps that are going), then removes the
// directories.
func removePins(dir string) error {
	var errs []error
	ents, _ := os.ReadDir(linksDir(dir))
	for _, e := range ents {
		p := linkPin(dir, e.Name())
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", p, err))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", p, err))
		}
		l.Close()
	}
	_ = os.Remove(linksDir(dir))
	ents, _ = os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		m, err := ebpf.LoadPinnedMap(p, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s is not a pinned map: %w", p, err))
			continue
		}
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", p, err))
		}
		m.Close()
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// startPinned creates the meta map of a new pinned dataplane, before any
// link is attached, so every pinned state is adoptable.
func (b *Backend) startPinned(objs *fwObjects, capacity uint32) error {
	spec, err := loadFw()
	if err != nil {
		return fmt.Errorf("load program spec: %w", err)
	}
	mm, err := newMeta(b.opts.PinDir)
	if err != nil {
		return fmt.Errorf("create %s: %w", metaPath(b.opts.PinDir), err)
	}
	b.mu.Lock()
	b.meta, b.fingerprint, b.capacity = mm, layoutFingerprint(spec), capacity
	b.mu.Unlock()
	return b.writeMeta()
}
