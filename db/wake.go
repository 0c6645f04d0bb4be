package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tasker-sweeper/retrysweeper/db/internal/dbsqlc"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

var _ sweeper.DueStore = (*Store)(nil)

// ProbeDue implements sweeper.DueStore.
func (s *Store) ProbeDue(ctx context.Context, req sweeper.ProbeRequest) (sweeper.DueProbe, sweeper.Lease, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return sweeper.DueProbe{}, nil, err
	}
	return p.probeDue(ctx, req)
}

// Reevaluate implements sweeper.DueStore.
func (s *Store) Reevaluate(ctx context.Context) (sweeper.Preparation, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return sweeper.Preparation{}, err
	}
	return p.reevaluateOnly(ctx)
}

// Adopt implements sweeper.DueStore.
func (s *Store) Adopt(ctx context.Context) (sweeper.Adoption, error) {
	p, err := s.choose(ctx)
	if err != nil {
		return sweeper.Adoption{}, err
	}
	return p.adoptOnly(ctx)
}

func (*scanStore) probeDue(context.Context, sweeper.ProbeRequest) (sweeper.DueProbe, sweeper.Lease, error) {
	return sweeper.DueProbe{}, nil, sweeper.ErrNoSchedule
}

func (*scanStore) reevaluateOnly(context.Context) (sweeper.Preparation, error) {
	return sweeper.Preparation{}, sweeper.ErrNoSchedule
}

func (*scanStore) adoptOnly(context.Context) (sweeper.Adoption, error) {
	return sweeper.Adoption{}, sweeper.ErrNoSchedule
}

// probeDue runs ScheduleProbe. Asked for the lease, it runs on a connection
// of its own, which it keeps while the lease is held: the lease is a session
// advisory lock, and the same session must give it back.
func (s *scheduleStore) probeDue(ctx context.Context, req sweeper.ProbeRequest) (sweeper.DueProbe, sweeper.Lease, error) {
	params := dbsqlc.ScheduleProbeParams{
		Now: s.now(), After: optionalTime(req.After), Until: optionalTime(req.Until), TakeLease: req.Lease,
	}
	if !req.Lease {
		row, err := s.q.ScheduleProbe(ctx, params)
		if err != nil {
			return sweeper.DueProbe{}, nil, fmt.Errorf("probe the schedule: %w", asSentinel(err))
		}
		return dueProbe(row), nil, nil
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return sweeper.DueProbe{}, nil, fmt.Errorf("probe the schedule: %w", asSentinel(err))
	}
	row, err := dbsqlc.New(conn).ScheduleProbe(ctx, params)
	if err != nil {
		discard(conn) // it may hold the lock: a fresh session is the safe way out
		return sweeper.DueProbe{}, nil, fmt.Errorf("probe the schedule: %w", asSentinel(err))
	}
	if !row.Leased {
		conn.Release()
		return dueProbe(row), nil, nil
	}
	return dueProbe(row), &timerLease{conn: conn, now: s.now}, nil
}

// timerLease is a held timer lease and the connection whose session holds it.
type timerLease struct {
	conn *pgxpool.Conn
	now  func() *time.Time
}

// leaseReleaseTimeout bounds giving the lease back, which runs even when
// the caller's context is cancelled (a shutdown).
const leaseReleaseTimeout = 5 * time.Second

// Release implements sweeper.Lease. A failure closes the connection, which
// ends its session and so frees the lock: a held lease never outlives its
// holder's use of it.
func (l *timerLease) Release(ctx context.Context, after time.Time) (sweeper.DueProbe, error) {
	if l.conn == nil {
		return sweeper.DueProbe{}, errors.New("release the timer lease: already released")
	}
	conn := l.conn
	l.conn = nil
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseReleaseTimeout)
	defer cancel()
	row, err := dbsqlc.New(conn).ScheduleProbe(rctx, dbsqlc.ScheduleProbeParams{
		Now: l.now(), After: optionalTime(after), DropLease: true,
	})
	if err != nil || !row.Released {
		discard(conn)
		if err == nil {
			err = errors.New("the session did not hold the lease")
		}
		return sweeper.DueProbe{}, fmt.Errorf("release the timer lease: %w", asSentinel(err))
	}
	conn.Release()
	return dueProbe(row), nil
}

// discard closes a pooled connection instead of returning it to the pool.
func discard(conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Conn().Close(ctx)
	conn.Release() // the pool drops a closed connection
}

func dueProbe(row dbsqlc.ScheduleProbeRow) sweeper.DueProbe {
	p := sweeper.DueProbe{DBNow: row.DbNow, DueNow: row.DueNow, Leftover: row.Leftover}
	if row.DueNow {
		p.Earliest = row.EarliestDue
	}
	if row.HasNext {
		p.Next = row.NextDue
	}
	return p
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// reevaluateOnly is prepare's re-evaluation of the overdue rows that cannot
// move, for the timer gate's sweeps (which run only when a probe found
// something due, and re-evaluate only when it saw rows left over).
func (s *scheduleStore) reevaluateOnly(ctx context.Context) (sweeper.Preparation, error) {
	var p sweeper.Preparation
	err := s.reevaluate(ctx, &p)
	return p, err
}

// adoptOnly is one adoption pass (the daemon's adoption loop).
func (s *scheduleStore) adoptOnly(ctx context.Context) (sweeper.Adoption, error) {
	return s.adopt(ctx)
}
