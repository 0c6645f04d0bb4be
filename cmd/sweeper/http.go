package main

import (
	"context"
	"log/slog"
	"net/http"

	"retrysweeper/db"
	"retrysweeper/handling"
	"retrysweeper/sweeper"
)

// adminDeps is what the admin API needs from the daemon.
type adminDeps struct {
	scheduler     *sweeper.Scheduler
	sweeper       *sweeper.Sweeper
	store         *db.Store
	ready         func() bool
	metrics       *metrics
	token         string
	logger        *slog.Logger
	handleFailure func(context.Context, handling.Failure) (handling.Result, error)
}

// newAdminAPI builds the admin API's routes. PLACEHOLDER: being written.
func newAdminAPI(d adminDeps) http.Handler {
	mux := http.NewServeMux()
	_ = d
	return mux
}
