package admin

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

// DefaultSweepLogSize is how many sweeps a SweepLog of size zero keeps.
const DefaultSweepLogSize = 50

// SweepRecord is one finished sweep as GET /v1/sweeps/recent shows it.
type SweepRecord struct {
	SweepID   uuid.UUID       `json:"sweep_id"`
	Trigger   sweeper.Trigger `json:"trigger"`
	Path      sweeper.Path    `json:"path"`
	StartedAt time.Time       `json:"started_at"`
	// Moved is how many steps the sweep moved to pending.
	Moved      int     `json:"moved"`
	LostRaces  int     `json:"lost_races"`
	DurationMS float64 `json:"duration_ms"`
	// MaxLagMS is the largest due-to-pending lag of the moved steps; zero
	// when none moved.
	MaxLagMS float64 `json:"max_lag_ms"`
	// Outcome is success, failure or interrupted; Error says why a sweep
	// failed or was interrupted.
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// SweepLog keeps the last sweeps of this process in memory, for GET
// /v1/sweeps/recent and the web page. Feed it every sweep (SweepDone fits
// sweeper.Hooks.SweepDone); dry runs are left out, as they move nothing.
type SweepLog struct {
	mu   sync.Mutex
	size int
	ring []SweepRecord // oldest first once full: next is the oldest
	next int
}

// NewSweepLog keeps the last size sweeps (zero: DefaultSweepLogSize).
func NewSweepLog(size int) *SweepLog {
	if size <= 0 {
		size = DefaultSweepLogSize
	}
	return &SweepLog{size: size}
}

// SweepDone records one finished sweep.
func (l *SweepLog) SweepDone(sum sweeper.Summary, err error) {
	if sum.DryRun {
		return
	}
	rec := SweepRecord{
		SweepID: sum.SweepID, Trigger: sum.Trigger, Path: sum.Path, StartedAt: sum.StartedAt.UTC(),
		Moved: sum.Transitioned, LostRaces: sum.LostRaces, DurationMS: sum.DurationMS, MaxLagMS: sum.MaxLagMS,
		Outcome: "success",
	}
	switch {
	case sum.Interrupted || errors.Is(err, sweeper.ErrInterrupted) || errors.Is(err, context.Canceled):
		rec.Outcome = "interrupted"
	case err != nil:
		rec.Outcome = "failure"
	}
	if err != nil {
		rec.Error = err.Error()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) < l.size {
		l.ring = append(l.ring, rec)
		return
	}
	l.ring[l.next] = rec
	l.next = (l.next + 1) % l.size
}

// Recent returns the kept sweeps, newest first.
func (l *SweepLog) Recent() []SweepRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]SweepRecord, 0, len(l.ring))
	for i := range len(l.ring) {
		out = append(out, l.ring[(l.next+len(l.ring)-1-i)%len(l.ring)])
	}
	return out
}

// recentSweepsResponse is GET /v1/sweeps/recent.
type recentSweepsResponse struct {
	Sweeps []SweepRecord `json:"sweeps"`
}

func (a *server) recentSweeps(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, recentSweepsResponse{Sweeps: a.SweepLog.Recent()})
}
