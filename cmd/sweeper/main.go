// Command sweeper is the tasker retry sweeper sidecar. SIGINT and SIGTERM
// stop it cleanly; internal/cli does everything else.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tasker-sweeper/retrysweeper/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
