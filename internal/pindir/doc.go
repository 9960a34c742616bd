// Package pindir is what both backends do with the bpffs directory a
// pinned dataplane lives in (their Options.PinDir): check that it is on a
// bpf filesystem, and hold it, so that one process at a time owns the
// dataplane pinned there.
//
// The hold is an exclusive flock(2) on the directory itself (bpffs keeps no
// regular files, but any inode can be flocked). The kernel drops it when
// the holder's file is closed, which includes the holder dying of any
// cause, kill -9 included: a dead owner never blocks the next process, and
// a live one is always seen. /proc/locks names the holder's pid.
//
// Errors: [ErrInUse] (wrapped, naming the pid when the kernel tells it)
// when another open file holds the directory; otherwise the system call's
// error, wrapped with %w. A *Lock is safe for concurrent use; Unlock is
// idempotent and safe on nil.
package pindir
