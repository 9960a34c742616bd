// Package dptest is the conformance suite every dataplane backend runs, in
// the spirit of testing/fstest and nettest.TestConn: one table of cases,
// real traffic through a real lab, the same checks of verdicts, counters
// and reports whichever backend runs.
//
// A backend's test calls [Run] with an [Opener]:
//
//	func TestConformance(t *testing.T) {
//		dptest.Run(t, dataplane.ModeEBPF, func(ctx context.Context, netns string) (dataplane.DataPlane, error) {
//			return New(ctx, &Options{NetNS: netns})
//		})
//	}
//
// Run builds one [Lab] (client, firewall, server and mirror sink
// namespaces, internal/netlab), opens the backend in the firewall
// namespace and runs every registered [Case] as a subtest: the cases share
// the dataplane (each applies its own config, [Base] by default) unless
// they ask for a fresh one. At the end it closes the dataplane and checks
// that nothing of it is left on the lab's interfaces.
//
// # Adding cases
//
// Cases register themselves from an init function ([Register]), a file per
// group (cases_policy_linux.go, cases_icmp_linux.go, ...): the session
// model, NAT and TC attach add theirs without touching the runner. A case
// gets a testing.TB and an [Env] with the lab, the dataplane and probes
// ([Env.UDPFlow], [Env.TCPFlow], [Env.PingFlow], [UDP] with TTL, size and
// don't-fragment, [SendFrames] for raw frames, [Capture]); [Expect] runs a
// table of probes concurrently, so denied flows cost one timeout, not one
// each. Give every probe a source port from [Env.Port] so it is a new flow.
//
// # Known differences
//
// [Divergences] lists where a backend does not yet do what a case checks
// (case, backend, issue). The case still runs there: a failure is reported
// as a skip naming the divergence, and a pass fails the test, so the entry
// is removed with the fix (unless the entry is Intermittent: its showing
// depends on timing, and a pass is logged).
//
// # Exact counts on a shared lab
//
// Counters are global and earlier cases may leave packets in flight (a
// retransmission, an RST of a closed test server). A case that needs an
// exact count reads its baseline with [Env.Settle] (counters still for
// 300 ms) and checks with [Env.Exactly] (the rise, then still again);
// [Env.ClearAll] starts a case's listing from nothing. Cases close test
// connections with an RST where the session may already be gone, so that
// nothing retransmits into a later case. [Fields] lists every field of dataplane.Config
// with what each backend does with it; the "config/fields" case observes
// it, and TestFieldsCoverConfig fails when a field has no entry.
//
// # Errors and concurrency
//
// Setup failures fail the test (or skip it without privileges, failing
// under FWPLANE_REQUIRE_PRIVILEGED=1, as internal/testutil does). Probes
// return a [Probe] (answered, silent, port unreachable, another ICMP
// error, or failed with the setup error) rather than an error. An [Env] is
// used by one case at a time; probes and [Expect] may run concurrently.
package dptest
