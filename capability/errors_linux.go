package capability

import (
	"errors"

	"github.com/cilium/ebpf"
)

func isEbpfNotSupported(err error) bool { return errors.Is(err, ebpf.ErrNotSupported) }
