// Package dataplane is the backend-neutral contract of fwplane: the
// [DataPlane] interface every backend implements, the [Config] model with its
// validation, and the [ResourceReport] that tells operators how full every
// bounded resource is, whichever backend runs.
//
// The package holds no kernel code and imports nothing Linux-only, so
// embedders can build, validate and render configs and reports on any OS.
//
// # Errors
//
// Errors are matched with [errors.Is] and [errors.As], never by text:
//
//   - [ErrInvalidConfig]: the config has problems. The error is a
//     *[ConfigError] listing every problem with its field path, e.g.
//     "port_mirroring[1].rate: must be >= 0". Nothing was changed.
//   - [ErrNotSupported]: the backend (or host) cannot do what was asked. The
//     error is usually a *[NotSupportedError] with the reasons. Nothing was
//     changed: fwplane fails closed and never silently drops a feature.
//   - [ErrClosed]: the dataplane was closed.
//
// Anything else (a kernel error while programming a map, say) is wrapped with
// %w so the errno underneath stays matchable.
//
// # Concurrency
//
// A [DataPlane] is safe for concurrent use. Apply calls are serialised by the
// backend; ResourceStats may run concurrently with Apply and with forwarding
// and never takes a lock the datapath takes. Close may be called at any time,
// more than once, and from any goroutine; calls after Close return
// [ErrClosed]. [Config] values are plain data: do not mutate one while a call
// that received it is running.
//
// # Apply is all-or-nothing
//
// Apply validates the config first and returns every problem at once. If the
// config is valid but cannot be programmed (an interface does not exist, a
// feature is unsupported, a kernel call fails), the running dataplane keeps
// the previous generation exactly as it was. Only problems that the contract
// defines as soft, such as a port-mirroring output that does not resolve, are
// reported as [Warning]s in the [ApplyResult] while the rest applies.
package dataplane
