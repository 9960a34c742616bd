package xsk

import "errors"

var (
	// ErrClosed is returned by methods of a closed Binding or Shim.
	ErrClosed = errors.New("closed")
	// ErrInvalidOptions means an Options or ShimOptions field is out of
	// range (ring sizes must be powers of two, frames at least 1, ...).
	ErrInvalidOptions = errors.New("invalid options")
	// ErrLinkDown means the kernel refused to transmit because the
	// interface is down or gone (ENETDOWN, ENXIO) or has no buffers for the
	// socket (ENOBUFS, seen while a link goes down). The errno is wrapped
	// too. Frames already queued stay in the TX ring and leave when the link
	// is back and the ring is kicked again (Transmit or Kick).
	ErrLinkDown = errors.New("link down")
	// ErrQueueTaken means another socket is bound to the (interface, queue):
	// bind kept answering EBUSY past Options.BindTimeout, or the shim already
	// serves that queue.
	ErrQueueTaken = errors.New("queue already bound")
	// ErrFrameState means a descriptor passed to Release or Transmit is not
	// a frame the caller owns (double release, a stale or foreign address).
	// Nothing is changed for that descriptor or the ones after it.
	ErrFrameState = errors.New("frame not owned by the caller")
)
