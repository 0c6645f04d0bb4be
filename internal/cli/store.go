package cli

import (
	"context"
	"time"

	"github.com/tasker-sweeper/retrysweeper/db"
)

// connectTimeout bounds how long a one-shot command waits for the database.
const connectTimeout = 15 * time.Second

// openStore connects for a one-shot command; close it with store.Pool().Close().
func openStore(ctx context.Context, url string) (*db.Store, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	pool, err := db.Connect(ctx, url)
	if err != nil {
		return nil, err // "connect to database: ..."
	}
	return db.NewStore(pool), nil
}
