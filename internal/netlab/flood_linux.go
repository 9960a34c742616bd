//go:build linux

package netlab

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// MaxFloodFrame is the largest frame a [Flood] can send (the template
// buffer of netlab_gen.c). A frame larger than the link's MTU plus its
// Ethernet header is dropped by the kernel.
const MaxFloodFrame = 2048

// FloodChunkTime is about how long one BPF_PROG_RUN call sends when
// Flood.Chunk is 0: the chunk is sized from the rate of the previous call.
//
// Every call costs about 22 ms during which no frame leaves, whatever its
// size (measured here: 2 frames take 22 ms, 65 536 take 35 ms): for a
// repeated run the kernel registers the program with the XDP dispatcher
// before and unregisters it after, and each update waits for an RCU grace
// period. Fixed chunks of 65 536 frames left the generator idle for 40-60 %
// of a flood, in 22 ms gaps that a receiver with a ring (AF_XDP) drains
// and then idles through, so a forwarder's throughput was under-measured
// by that much. Half a second per call keeps the gaps near 4 % and
// cancellation within about half a second.
const FloodChunkTime = 500 * time.Millisecond

// firstFloodChunk is the size of a flood's first call when Flood.Chunk is
// 0, before a rate is known.
const firstFloodChunk = 1 << 18

// Flood sends the same frame Count times out of Iface in NS, as fast as
// the kernel can, with BPF_PROG_RUN of an XDP program in live-frames mode
// (BPF_F_TEST_XDP_LIVE_FRAMES) whose XDP_TX transmits each frame out of the
// interface. The frames arrive at the veth peer of Iface, whose receive
// side needs NAPI (the lab turns GRO on for that reason).
type Flood struct {
	NS    *NS
	Iface string
	// Frame is the full Ethernet frame, 14 to MaxFloodFrame bytes.
	Frame []byte
	Count uint64
	// BatchSize is the kernel's live-frames batch size; 0 means the
	// kernel default (64).
	BatchSize uint32
	// Chunk is the number of frames per BPF_PROG_RUN call, between which
	// ctx is checked; 0 sizes each call to about FloodChunkTime.
	Chunk uint32
	// Flows varies the frames' source so that they carry many distinct
	// flows; the zero value sends Frame unchanged.
	Flows FloodFlows
	// Rate, when set, bounds the average rate (frames per second): Run
	// sleeps between calls until the frames sent so far are due, so
	// frames leave in bursts of Chunk (0: about 4 ms worth, at least 256)
	// at the generator's speed. A forwarder slower than the generator
	// with a receive ring (AF_XDP) loses nothing to a paced flood whose
	// bursts fit its ring. Each call costs a few milliseconds however few
	// frames it sends, which bounds the rate small chunks reach.
	Rate float64
}

// FloodResult is what a flood did.
type FloodResult struct {
	// Sent counts frames the program handed to XDP_TX (the kernel may
	// still drop some on the way, e.g. when the peer's ring is full:
	// count at the receiver to know).
	Sent    uint64
	Elapsed time.Duration
	// PPS is Sent per second of Elapsed.
	PPS float64
}

// xdpMd is struct xdp_md, the context of an XDP BPF_PROG_RUN.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Run sends the flood and returns what was sent. It stops early, with
// ctx's error and the partial result, when ctx ends. The count is exact:
// the program itself stops transmitting at the limit, whatever the kernel's
// repetitions.
func (f Flood) Run(ctx context.Context) (FloodResult, error) {
	var res FloodResult
	switch {
	case f.NS == nil:
		return res, errors.New("run flood: no namespace")
	case len(f.Frame) < 14 || len(f.Frame) > MaxFloodFrame:
		return res, fmt.Errorf("run flood: frame of %d bytes, want 14 to %d", len(f.Frame), MaxFloodFrame)
	case f.Count == 0:
		return res, nil
	}
	chunk := uint64(f.Chunk)
	adaptive := chunk == 0 && f.Rate <= 0
	switch {
	case f.Rate > 0 && chunk == 0:
		chunk = uint64(max(256, f.Rate*0.004))
	case adaptive:
		chunk = firstFloodChunk
	}
	spec, err := loadNetlabGen()
	if err != nil {
		return res, fmt.Errorf("load flood spec: %w", err)
	}
	var objs netlabGenObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return res, fmt.Errorf("load flood program: %w", err)
	}
	defer objs.Close()
	var tmpl [MaxFloodFrame]byte
	copy(tmpl[:], f.Frame)
	if err := objs.Tmpl.Set(tmpl); err != nil {
		return res, fmt.Errorf("set flood template: %w", err)
	}
	if err := objs.TmplLen.Set(uint32(len(f.Frame))); err != nil {
		return res, fmt.Errorf("set flood template length: %w", err)
	}
	if err := f.Flows.program(&objs, f.Frame); err != nil {
		return res, fmt.Errorf("run flood: %w", err)
	}

	err = f.NS.Do(func() error {
		ifc, err := net.InterfaceByName(f.Iface)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", f.Iface, f.NS, err)
		}
		opts := &ebpf.RunOptions{
			Data:      f.Frame,
			Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			Context:   xdpMd{DataEnd: uint32(len(f.Frame)), IngressIfindex: uint32(ifc.Index)},
			BatchSize: f.BatchSize,
		}
		start := time.Now()
		defer func() { res.Elapsed = time.Since(start) }()
		for res.Sent < f.Count {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("run flood: %w", err)
			}
			if f.Rate > 0 {
				due := start.Add(time.Duration(float64(res.Sent) / f.Rate * float64(time.Second)))
				if wait := time.Until(due); wait > 0 {
					t := time.NewTimer(wait)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
						return fmt.Errorf("run flood: %w", ctx.Err())
					}
				}
			}
			limit := min(res.Sent+chunk, f.Count)
			if err := objs.Limit.Set(limit); err != nil {
				return fmt.Errorf("set flood limit: %w", err)
			}
			opts.Repeat = uint32(limit - res.Sent)
			callStart := time.Now()
			if _, err := objs.NetlabGen.Run(opts); err != nil {
				return fmt.Errorf("run flood program on %s: %w", f.Iface, err)
			}
			if took := time.Since(callStart); adaptive && took > 0 {
				rate := float64(limit-res.Sent) / took.Seconds()
				chunk = uint64(max(float64(firstFloodChunk)/4, min(rate*FloodChunkTime.Seconds(), float64(math.MaxUint32))))
			}
			var sent uint64
			if err := objs.Sent.Get(&sent); err != nil {
				return fmt.Errorf("read flood count: %w", err)
			}
			if sent != limit {
				// Only XDP_ABORTED stops short: the frame does not fit
				// the live-frames buffer or the template.
				res.Sent = sent
				return fmt.Errorf("run flood on %s: program sent %d of %d frames (frame rejected)", f.Iface, sent, limit)
			}
			res.Sent = sent
		}
		return nil
	})
	if res.Elapsed > 0 {
		res.PPS = float64(res.Sent) / res.Elapsed.Seconds()
	}
	return res, err
}
