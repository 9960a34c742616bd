//go:build !linux

package capability

func isEbpfNotSupported(error) bool { return false }
