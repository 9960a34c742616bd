// Command fwctl is the operator CLI of the reference daemon fwd: it talks
// to fwd's control socket (package control) and prints what operators
// type `show system buffers` for.
//
//	fwctl [--socket PATH] show system buffers [detail] [--json]
//	fwctl [--socket PATH] show system buffers history [NAME] [--scope S] [--since D] [--json]
//	fwctl [--socket PATH] show system buffers events [--json]
//	fwctl [--socket PATH] diagnose [--window D] [--json]
//	fwctl [--socket PATH] show capability [--json]
//	fwctl [--socket PATH] show sessions [--limit N] [--json]
//	fwctl [--socket PATH] reload [--json]
//
// Exit status: 0 on success, 1 when the daemon is unreachable or refuses,
// 2 on a usage error, 3 when diagnose finds a failing check.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fwplane/fwplane/examples/internal/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
