package userspacebackend

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/fwplane/fwplane/dataplane"
	"github.com/fwplane/fwplane/internal/netnsutil"
	"github.com/fwplane/fwplane/internal/pindir"
	"github.com/fwplane/fwplane/userspacebackend/internal/xsk"
)

// A pinned userspace dataplane (Options.PinDir) is:
//
//	PinDir/xsk_meta            layout version, shim fingerprint, generation
//	PinDir/shims/<ifindex>-<interface>/
//	                           one pinned shim per managed interface (its
//	                           maps and its bpf_link, see internal/xsk)
//
// The shims stay attached when the process dies and drop transit frames
// (no socket, then a stale heartbeat), so the firewall fails closed; the
// next New with the same PinDir adopts them. Sessions live in the process
// and are lost with it.

// layoutVersion names the meaning of the pinned dataplane: the meta and
// the shims' maps. Bump it when a map's contents change meaning without
// changing its shape (the shim fingerprint catches shape changes).
const layoutVersion = xsk.ShimLayoutVersion

// ErrIncompatiblePin means a pinned userspace dataplane was found whose
// layout this build cannot adopt; the error says what differs. Nothing
// was changed.
var ErrIncompatiblePin = xsk.ErrIncompatiblePin

// MetaName is the pin of a userspace dataplane's meta map: a directory
// holding it holds a pinned userspace dataplane.
const MetaName = "xsk_meta"

// ebpfMetaName is the eBPF backend's meta pin: a directory holding it is
// that backend's, never this one's.
const ebpfMetaName = "fw_meta"

// pinMeta is the value of the meta map.
type pinMeta struct {
	Version     uint32
	_           uint32
	Fingerprint [32]byte
	Generation  uint64
}

const pinMetaSize = 4 + 4 + 32 + 8

func metaPath(dir string) string   { return filepath.Join(dir, MetaName) }
func shimsDir(dir string) string   { return filepath.Join(dir, "shims") }
func shimDir(dir, n string) string { return filepath.Join(shimsDir(dir), n) }

// shimDirName names an interface's shim directory; the ifindex keeps a
// shim of an interface that was replaced by another of the same name
// apart from the new one's.
func shimDirName(name string, ifindex int) string { return fmt.Sprintf("%d-%s", ifindex, name) }

// parseShimDirName is shimDirName's inverse.
func parseShimDirName(d string) (name string, ifindex int, ok bool) {
	idx, name, ok := strings.Cut(d, "-")
	if !ok || name == "" {
		return "", 0, false
	}
	n, err := strconv.Atoi(idx)
	if err != nil || n <= 0 {
		return "", 0, false
	}
	return name, n, true
}
func hasPinnedDataplane(dir string) bool { _, err := os.Stat(metaPath(dir)); return err == nil }

// HasPinned reports whether dir holds a pinned userspace dataplane.
func HasPinned(dir string) bool { return hasPinnedDataplane(dir) }

func (b *Backend) layoutVersion() uint32 {
	if b.opts.testLayoutVersion != 0 {
		return b.opts.testLayoutVersion
	}
	return layoutVersion
}

// pinned is a backend's hold on its pin directory.
type pinned struct {
	dir         string
	lock        *pindir.Lock
	meta        *ebpf.Map
	fingerprint [32]byte
	version     uint32
	// adopted: the dataplane was found pinned (not made by this process).
	adopted bool
}

// openPinned takes Options.PinDir: holds it, then adopts the dataplane
// pinned there (shims attached as they were, generation continued), or
// replaces an incompatible one when asked to, or starts a fresh one. On
// error nothing pinned has changed and the directory is let go.
func (b *Backend) openPinned() (err error) {
	dir := b.opts.PinDir
	lock, err := pindir.Acquire(dir)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			lock.Unlock()
		}
	}()
	fp, err := xsk.ShimFingerprint()
	if err != nil {
		return err
	}
	p := &pinned{dir: dir, lock: lock, fingerprint: fp, version: b.layoutVersion()}
	if _, err := os.Stat(filepath.Join(dir, ebpfMetaName)); err == nil {
		return fmt.Errorf("pin directory %s holds a pinned eBPF dataplane, not a userspace one: run the eBPF backend, or remove it first (fwd --remove, or fwplane.RemovePinned)", dir)
	}
	if hasPinnedDataplane(dir) {
		err := b.adopt(p)
		if err == nil || !errors.Is(err, ErrIncompatiblePin) || !b.opts.ReplaceIncompatible {
			return err
		}
		if rerr := removePins(dir); rerr != nil {
			return fmt.Errorf("replace the incompatible dataplane in %s: %w", dir, rerr)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	} else if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		return fmt.Errorf("pin directory %s holds pins but no fwplane dataplane (no %s): remove them first", dir, MetaName)
	}
	mm, err := newMeta(dir)
	if err != nil {
		return err
	}
	p.meta = mm
	b.pin = p
	if err := b.writeMeta(); err != nil {
		b.pin = nil
		mm.Close()
		_ = os.Remove(metaPath(dir))
		return err
	}
	return nil
}

func newMeta(dir string) (*ebpf.Map, error) {
	spec := &ebpf.MapSpec{Name: MetaName, Type: ebpf.Array, KeySize: 4, ValueSize: pinMetaSize, MaxEntries: 1, Pinning: ebpf.PinByName}
	m, err := ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", metaPath(dir), err)
	}
	return m, nil
}

// writeMeta records the layout and the generation in force.
func (b *Backend) writeMeta() error {
	if b.pin == nil {
		return nil
	}
	m := pinMeta{Version: b.pin.version, Fingerprint: b.pin.fingerprint, Generation: b.gen}
	if err := b.pin.meta.Update(uint32(0), &m, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write %s: %w", metaPath(b.pin.dir), err)
	}
	return nil
}

// adopt checks the pinned dataplane's layout, then every shim's, then
// takes every shim over (see xsk.PrepareAdopt): all of them or none.
// Shims whose interface is gone are removed (they filter nothing).
func (b *Backend) adopt(p *pinned) (err error) {
	dir := p.dir
	mm, err := ebpf.LoadPinnedMap(metaPath(dir), nil)
	if err != nil {
		return fmt.Errorf("open %s: %w", metaPath(dir), err)
	}
	defer func() {
		if err != nil {
			mm.Close()
		}
	}()
	var m pinMeta
	if mm.ValueSize() != pinMetaSize || mm.KeySize() != 4 {
		return fmt.Errorf("adopt %s: %w: meta of %d-byte values, this build writes %d", dir, ErrIncompatiblePin, mm.ValueSize(), pinMetaSize)
	}
	if err := mm.Lookup(uint32(0), &m); err != nil {
		return fmt.Errorf("read %s: %w", metaPath(dir), err)
	}
	var diffs []string
	if m.Version != p.version {
		diffs = append(diffs, fmt.Sprintf("layout version %d pinned, %d in this build", m.Version, p.version))
	}
	if m.Fingerprint != p.fingerprint {
		diffs = append(diffs, "shim map shapes differ (types, key or value sizes, flags)")
	}
	if len(diffs) > 0 {
		return fmt.Errorf("adopt %s: %w: %s; remove it (fwd --remove, or Close) or run the build that made it, or set ReplaceIncompatible to replace it",
			dir, ErrIncompatiblePin, strings.Join(diffs, "; "))
	}

	// Which interface each pinned shim serves, from its link.
	ents, err := os.ReadDir(shimsDir(dir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("adopt %s: %w", dir, err)
	}
	type found struct {
		name    string
		ifindex int
	}
	var live []found
	var stale []string
	for _, e := range ents {
		sd := shimDir(dir, e.Name())
		name, want, ok := parseShimDirName(e.Name())
		if !ok {
			return fmt.Errorf("adopt %s: %s is not a shim directory of this build: %w", dir, sd, ErrIncompatiblePin)
		}
		if !xsk.HasPinnedShim(sd) {
			stale = append(stale, e.Name())
			continue
		}
		ifindex, err := pinnedIfindex(sd)
		if err != nil {
			return fmt.Errorf("adopt %s: %w", dir, err)
		}
		if ifindex != want || !b.ifindexExists(ifindex) {
			// Its interface is gone: the link filters nothing.
			stale = append(stale, e.Name())
			continue
		}
		live = append(live, found{name, ifindex})
	}
	var preps []*xsk.Adoption
	defer func() {
		if err != nil {
			for _, a := range preps {
				a.Abort()
			}
		}
	}()
	err = netnsutil.Do(b.opts.NetNS, func() error {
		for _, f := range live {
			a, err := xsk.PrepareAdopt(f.ifindex, b.shimOptions(f.name, f.ifindex))
			if err != nil {
				return fmt.Errorf("adopt the shim of %s: %w", f.name, err)
			}
			preps = append(preps, a)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("adopt %s: %w", dir, err)
	}
	// Checked: commit. A failure now (a kernel refusing a link update)
	// leaves the shims committed so far running this build's program on
	// the same maps, which is what the next attempt does anyway.
	ports := map[string]*port{}
	err = netnsutil.Do(b.opts.NetNS, func() error {
		for i, a := range preps {
			s, err := a.Commit()
			if err != nil {
				for _, pt := range ports {
					pt.shim.Release()
				}
				preps = preps[i+1:]
				return fmt.Errorf("adopt the shim of %s: %w", live[i].name, err)
			}
			ports[live[i].name] = &port{name: live[i].name, ifindex: live[i].ifindex, shim: s}
		}
		preps = nil
		return nil
	})
	if err != nil {
		return fmt.Errorf("adopt %s: %w", dir, err)
	}
	for _, name := range stale {
		_ = xsk.RemovePinnedShim(shimDir(dir, name))
	}
	// Until the first Apply binds sockets, every transit frame is dropped
	// (no socket); ARP, ND and local traffic still reach the kernel.
	b.ports = ports
	b.gen = m.Generation
	p.meta, p.adopted = mm, true
	b.pin = p
	return nil
}

// pinnedIfindex reads the interface a pinned shim's link is attached to
// (0: detached, its interface is gone).
func pinnedIfindex(sd string) (int, error) {
	l, err := link.LoadPinnedLink(filepath.Join(sd, "link"), nil)
	if err != nil {
		return 0, fmt.Errorf("open the pinned link in %s: %w", sd, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("read the pinned link in %s: %w", sd, err)
	}
	if info.Type != link.XDPType {
		return 0, fmt.Errorf("the pinned link in %s is a %v link, not XDP: %w", sd, info.Type, ErrIncompatiblePin)
	}
	return int(info.XDP().Ifindex), nil
}

func (b *Backend) ifindexExists(ifindex int) bool {
	ok := false
	_ = netnsutil.Do(b.opts.NetNS, func() error {
		_, err := netlink.LinkByIndex(ifindex)
		ok = err == nil
		return nil
	})
	return ok
}

// shimOptions are the options of the shim of an interface.
func (b *Backend) shimOptions(name string, ifindex int) *xsk.ShimOptions {
	o := &xsk.ShimOptions{ForceGeneric: b.opts.ForceGenericXDP, HeartbeatLimit: max(b.opts.HeartbeatLimit, 0)}
	if b.opts.PinDir != "" {
		o.PinDir = shimDir(b.opts.PinDir, shimDirName(name, ifindex))
	}
	return o
}

// RemovePinned removes a pinned userspace dataplane that no process
// holds (an orphan left by `fwd --keep-dataplane`, a Release or a crash):
// every shim is detached and unpinned, then the meta and the directory
// go. The interfaces then carry no shim: the kernel forwards them. A
// directory held by a live process is refused (dataplane.ErrPinnedInUse,
// naming its pid); one without a pinned userspace dataplane is an error
// wrapping os.ErrNotExist.
func RemovePinned(dir string) error {
	if !hasPinnedDataplane(dir) {
		return fmt.Errorf("no pinned userspace dataplane in %s: %w", dir, os.ErrNotExist)
	}
	lock, err := pindir.Acquire(dir)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	return removePins(dir)
}

// removePins unpins every shim (links first, so each detaches), the meta
// and the directories.
func removePins(dir string) error {
	var errs []error
	ents, _ := os.ReadDir(shimsDir(dir))
	for _, e := range ents {
		if err := xsk.RemovePinnedShim(shimDir(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(shimsDir(dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := os.Remove(metaPath(dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("unpin %s: %w", metaPath(dir), err))
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// closePinned lets the pin directory go; with remove, everything pinned
// in it goes first (shims were closed, and so unpinned, before).
func (b *Backend) closePinned(remove bool) error {
	p := b.pin
	if p == nil {
		return nil
	}
	b.pin = nil
	var err error
	if p.meta != nil {
		p.meta.Close()
	}
	if remove {
		err = removePins(p.dir)
	}
	return errors.Join(err, p.lock.Unlock())
}

var _ dataplane.Releaser = (*Backend)(nil)
