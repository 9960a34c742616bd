//go:build linux

package xsk

import (
	"fmt"
	"math/bits"
	"time"

	"github.com/fwplane/fwplane/dataplane"
)

// DefaultFrameSize fits a 1518-byte frame after the 256-byte headroom the
// kernel reserves in copy mode (XDP_PACKET_HEADROOM). Aligned UMEM chunks must
// be a power of two between 2048 and the page size.
const DefaultFrameSize = 2048

// DefaultBindTimeout bounds the EBUSY retries of bind.
const DefaultBindTimeout = 2 * time.Second

// Options tunes Open; nil means defaults. Zero fields take defaults.
type Options struct {
	// RingSize is the size of every ring whose own size is 0 (default
	// dataplane.DefaultRingSize). Powers of two.
	RingSize uint32
	// FillRingSize, RXRingSize, TXRingSize and CompletionRingSize override
	// RingSize per ring.
	FillRingSize, RXRingSize, TXRingSize, CompletionRingSize uint32
	// Frames is the UMEM size in frames. RX and TX share it, so the default
	// is FillRingSize + TXRingSize: enough to keep the fill ring full while
	// the TX ring is full.
	Frames uint32
	// FrameSize is the UMEM chunk size (default DefaultFrameSize).
	FrameSize uint32
	// Shim, when set, is told about the socket once it is bound and its fill
	// ring primed (XSKMAP entry, then ready flag) and untold before the
	// socket closes. It must be attached to the same interface.
	Shim *Shim
	// BindTimeout bounds how long Open retries a bind that answers EBUSY
	// (the previous socket on the queue is still being torn down). Default
	// DefaultBindTimeout.
	BindTimeout time.Duration
	// NoNeedWakeup binds without XDP_USE_NEED_WAKEUP, so every Transmit
	// kicks the kernel. Open also falls back to it when the kernel rejects
	// the flag.
	NoNeedWakeup bool
	// ForceCopy binds with XDP_COPY. Without it the kernel tries zero-copy
	// and falls back to copy mode by itself (veth is always copy mode);
	// Stats.ZeroCopy tells which one it picked.
	ForceCopy bool
	// TXBudget raises how many frames the kernel sends per kick in copy mode
	// (XDP_MAX_TX_SKB_BUDGET, default 32). 0 keeps the kernel default.
	TXBudget uint32
	// MirrorFrames adds that many frames to the UMEM as a separate pool
	// only AllocMirror takes from (port-mirror clones). They never enter
	// the fill ring or the free stack AllocTX uses, so clones cannot take
	// a frame RX or forwarding needs. 0: no pool.
	MirrorFrames uint32
}

// OptionsFrom derives Options from the backend-neutral userspace config.
func OptionsFrom(u dataplane.UserspaceOpts) *Options {
	return &Options{RingSize: u.RingSizeOrDefault(), Frames: u.FramesOrDefault()}
}

// resolved are Options with every default applied and checked.
type resolved struct {
	fill, rx, tx, comp uint32
	frames, frameSize  uint32 // frames includes mirror
	mirror             uint32
	bindTimeout        time.Duration
	needWakeup, copy   bool
	txBudget           uint32
}

func resolve(opts *Options) (resolved, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	ring := o.RingSize
	if ring == 0 {
		ring = dataplane.DefaultRingSize
	}
	pick := func(v uint32) uint32 {
		if v == 0 {
			return ring
		}
		return v
	}
	r := resolved{
		fill: pick(o.FillRingSize), rx: pick(o.RXRingSize), tx: pick(o.TXRingSize), comp: pick(o.CompletionRingSize),
		frames: o.Frames, frameSize: o.FrameSize, bindTimeout: o.BindTimeout,
		needWakeup: !o.NoNeedWakeup, copy: o.ForceCopy, txBudget: o.TXBudget,
	}
	if r.frames == 0 {
		r.frames = r.fill + r.tx
	}
	r.mirror = o.MirrorFrames
	r.frames += r.mirror
	if r.frameSize == 0 {
		r.frameSize = DefaultFrameSize
	}
	if r.bindTimeout <= 0 {
		r.bindTimeout = DefaultBindTimeout
	}
	for _, c := range []struct {
		name string
		v    uint32
	}{{"fill", r.fill}, {"rx", r.rx}, {"tx", r.tx}, {"completion", r.comp}} {
		if bits.OnesCount32(c.v) != 1 || c.v > dataplane.MaxRingSize {
			return r, fmt.Errorf("%s ring size %d: want a power of two <= %d: %w", c.name, c.v, dataplane.MaxRingSize, ErrInvalidOptions)
		}
	}
	if r.frames > dataplane.MaxUMEMFrames {
		return r, fmt.Errorf("frames %d: want <= %d: %w", r.frames, dataplane.MaxUMEMFrames, ErrInvalidOptions)
	}
	if bits.OnesCount32(r.frameSize) != 1 || r.frameSize < 2048 || r.frameSize > 4096 {
		return r, fmt.Errorf("frame size %d: want 2048 or 4096: %w", r.frameSize, ErrInvalidOptions)
	}
	return r, nil
}
