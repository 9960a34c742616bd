package ebpfbackend

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/fwplane/fwplane/dataplane"
)

// The mirror stage (bpf/include/fw_common.h, bpf/xdp_fw.c): frames of a
// mirrored ingress are handed through a cpumap to another CPU, whose
// kthread runs xdp_fw_stage to forward them and make the clones there.
// Cloning doubles the transmit work of a frame (a page allocation and copy
// by the kernel's broadcast, a devmap program, a second transmit); inline,
// all of it lands on the CPU that received the frame, measured at 0.40 of
// the unmirrored rate. The receiving CPU keeps only the hand-over, and a
// credit scheme bounds what is in flight: past half of the stage's queue
// the receiving CPU stops asking for clones (counted as
// mirror_dropped_primary_backlog), past three quarters it forwards frames
// itself, so the queue never overflows and primary traffic is never dropped
// for the mirror's sake. The datapath never forgets a frame it handed
// over, however long the stage takes (a starved kthread must not make room
// that is not there); only setupStage, making the queues afresh, writes
// off what was never taken. The cost: frames of a mirrored ingress take a queue hop
// (a wakeup of the stage kthread when idle), and while the stage is more
// than half behind, frames forwarded here can overtake frames still in its
// queue.
const (
	// stageMaxRate is the sampling rate up to which a rule's ingress goes
	// to the stage. Sparser sampling clones too few frames to pay for the
	// hop (1 in 10 inline: 0.75 of the unmirrored rate), and frames of one
	// flow must not take two paths: handing over only the sampled ones
	// would reorder every flow.
	stageMaxRate = 4
	stageQsize   = 4096 // FW_STAGE_QSIZE
	maxCPUs      = 256  // FW_MAX_CPUS
)

// cpumapVal is the kernel's struct bpf_cpumap_val on update.
type cpumapVal struct {
	Qsize  uint32
	ProgFD int32
}

// setupStage gives every online CPU a cpumap queue running xdp_fw_stage and
// makes each CPU's stage the next online CPU. It returns the CPUs with a
// stage; none (and no error) on a machine with one online CPU. On error
// nothing is left programmed.
func setupStage(objs *fwObjects, waitReaders func()) ([]uint32, error) {
	cpus, err := onlineCPUs()
	if err != nil {
		return nil, err
	}
	if len(cpus) < 2 {
		return nil, nil
	}
	var done []uint32
	fail := func(err error) ([]uint32, error) {
		teardownStage(objs, done)
		return nil, err
	}
	for _, c := range cpus {
		if err := objs.FwCpus.Update(c, cpumapVal{Qsize: stageQsize, ProgFD: int32(objs.XdpFwStage.FD())}, ebpf.UpdateAny); err != nil {
			return fail(fmt.Errorf("cpumap queue with the stage program on CPU %d: %w", c, err))
		}
		done = append(done, c)
	}
	// The queues are new: whatever the datapath still counts in flight
	// from earlier ones is being drained or freed with them (the kernel
	// frees a removed queue after an RCU grace period; frames it still
	// takes then count as taken, which the datapath reconciles). No CPU
	// hands over (fw_stage_cpu is 0 for all) once program runs that read
	// it earlier are done, so after waitReaders the per-CPU state is Go's
	// to write.
	waitReaders()
	if err := resyncStage(objs); err != nil {
		return fail(err)
	}
	for i, c := range cpus {
		next := cpus[(i+1)%len(cpus)]
		if err := objs.FwStageCpu.Update(c, next+1, ebpf.UpdateAny); err != nil {
			return fail(fmt.Errorf("stage of CPU %d: %w", c, err))
		}
	}
	return cpus, nil
}

// resyncStage writes off, on every CPU, the frames handed over and never
// taken (counted as lost), and makes each CPU look at its stage on its next
// hand-over. Only while no CPU hands over.
func resyncStage(objs *fwObjects) error {
	var per []fwFwStageProd
	if err := objs.FwStageProdMap.Lookup(uint32(0), &per); err != nil {
		return fmt.Errorf("read mirror stage state: %w", err)
	}
	for cpu := range per {
		var d fwFwStageDone
		if cpu < maxCPUs {
			if err := objs.FwStageDoneMap.Lookup(uint32(cpu), &d); err != nil {
				return fmt.Errorf("read mirror stage progress: %w", err)
			}
		}
		if p := &per[cpu]; p.Sent >= d.Done {
			p.Lost = p.Sent - d.Done
		}
		per[cpu].Credit, per[cpu].Mode = 0, 0
	}
	if err := objs.FwStageProdMap.Update(uint32(0), per, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("reset mirror stage state: %w", err)
	}
	return nil
}

// teardownStage sends every CPU back to inline clones, then removes the
// queues (the kernel drains what they hold).
func teardownStage(objs *fwObjects, cpus []uint32) {
	for _, c := range cpus {
		_ = objs.FwStageCpu.Update(c, uint32(0), ebpf.UpdateAny)
	}
	for _, c := range cpus {
		_ = objs.FwCpus.Delete(c)
	}
}

// onlineCPUs lists the online CPUs below maxCPUs.
func onlineCPUs() ([]uint32, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return nil, fmt.Errorf("online CPUs: %w", err)
	}
	return parseCPUList(strings.TrimSpace(string(b)))
}

// parseCPUList parses the kernel's CPU list format ("0-3,5,7-8").
func parseCPUList(s string) ([]uint32, error) {
	var cpus []uint32
	if s == "" {
		return nil, errors.New("empty CPU list")
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseUint(lo, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("CPU list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 32); err != nil || b < a {
				return nil, fmt.Errorf("CPU list %q: bad range %q", s, part)
			}
		}
		for c := a; c <= b && c < maxCPUs; c++ {
			cpus = append(cpus, uint32(c))
		}
	}
	return cpus, nil
}

// stageCounters reports the stage: CPUs with one, frames handed over,
// forwarded on the receiving CPU because the stage was behind, written off
// when the queues were made again, and in flight now. m.mu is not held.
func (b *Backend) stageCounters(objs *fwObjects) ([]dataplane.Counter, error) {
	m := b.mir
	m.mu.Lock()
	cpus := append([]uint32(nil), m.stage...)
	m.mu.Unlock()
	var per []fwFwStageProd
	if err := objs.FwStageProdMap.Lookup(uint32(0), &per); err != nil {
		return nil, fmt.Errorf("read mirror stage counters: %w", err)
	}
	var sent, inline, lost, inflight uint64
	for cpu, p := range per {
		sent += p.Sent
		inline += p.Inline
		lost += p.Lost
		var d fwFwStageDone
		if cpu < maxCPUs && p.Sent > 0 {
			if err := objs.FwStageDoneMap.Lookup(uint32(cpu), &d); err != nil {
				return nil, fmt.Errorf("read mirror stage progress: %w", err)
			}
			// Modular, as the datapath computes it: frames written off
			// and taken after all give 0, not a wrapped count.
			if n := p.Sent - p.Lost - d.Done; n < 1<<63 {
				inflight += n
			}
		}
	}
	return []dataplane.Counter{
		{Name: "mirror_stage_cpus", Scope: "mirror", Value: uint64(len(cpus))},
		{Name: "mirror_stage_handed_packets", Scope: "mirror", Value: sent},
		{Name: "mirror_stage_forwarded_inline_packets", Scope: "mirror", Value: inline},
		{Name: "mirror_stage_lost_packets", Scope: "mirror", Value: lost},
		{Name: "mirror_stage_in_flight", Scope: "mirror", Value: inflight},
	}, nil
}
