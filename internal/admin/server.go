package admin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Limits bound what clients can hold of the admin server: how long a
// request may take to arrive and to be answered, how long an idle
// keep-alive connection stays open, how large the headers may be, and how
// many connections are open at once.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its answer. POST /v1/sweeps extends both deadlines to
	// Deps.SweepTimeout: a manual sweep of a backlog takes longer.
	WriteTimeout time.Duration
	// IdleTimeout is how long a keep-alive connection may wait for its
	// next request.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps the request line and headers; net/http answers
	// a larger request with a plain-text 431 before any handler runs.
	MaxHeaderBytes int
	// MaxConns is how many connections may be open at once; one more is
	// answered 503 (JSON) and closed.
	MaxConns int
}

// DefaultLimits are the daemon's: 10 s for the headers, 15 s for the whole
// request, 60 s to answer, 60 s idle, 64 KiB of headers, 64 connections.
func DefaultLimits() Limits {
	return Limits{
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		MaxConns:          64,
	}
}

// withDefaults fills every zero field from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&l.ReadHeaderTimeout, d.ReadHeaderTimeout},
		{&l.ReadTimeout, d.ReadTimeout},
		{&l.WriteTimeout, d.WriteTimeout},
		{&l.IdleTimeout, d.IdleTimeout},
	} {
		if *f.v <= 0 {
			*f.v = f.def
		}
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if l.MaxConns <= 0 {
		l.MaxConns = d.MaxConns
	}
	return l
}

// Server is the admin API's HTTP server with its Limits applied.
type Server struct {
	http   *http.Server
	limits Limits
	logger *slog.Logger
}

// NewServer serves handler (normally New's) within limits; zero fields of
// limits take their DefaultLimits value. logger gets net/http's own
// complaints at warn level; nil discards them.
func NewServer(handler http.Handler, limits Limits, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	limits = limits.withDefaults()
	return &Server{
		http: &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: limits.ReadHeaderTimeout,
			ReadTimeout:       limits.ReadTimeout,
			WriteTimeout:      limits.WriteTimeout,
			IdleTimeout:       limits.IdleTimeout,
			MaxHeaderBytes:    limits.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
		limits: limits,
		logger: logger,
	}
}

// Serve accepts connections on l, at most Limits.MaxConns at once, until
// Shutdown; it returns http.ErrServerClosed after a Shutdown.
func (s *Server) Serve(l net.Listener) error {
	return s.http.Serve(newLimitListener(l, s.limits.MaxConns, s.limits.MaxHeaderBytes, s.logger))
}

// Shutdown stops accepting, closes idle connections and waits for active
// requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// Refusals: refuseTimeout bounds reading the request of a connection over
// the limit and writing its answer, refuseLinger how long it is then read
// from so the close does not reset the answer away; at most maxRefusing
// refusals run at once.
const (
	refuseTimeout = 2 * time.Second
	refuseLinger  = 500 * time.Millisecond
	maxRefusing   = 64
)

// refusal is the answer to a connection over the limit.
var refusal = func() string {
	body := `{"error":"too many connections to the admin API; try again shortly","code":"unavailable"}` + "\n"
	return fmt.Sprintf("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"+
		"X-Content-Type-Options: nosniff\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		len(body), body)
}()

// limitListener holds at most cap(slots) connections open at once. A
// connection over the limit is answered 503 and closed by a goroutine of
// its own (at most maxRefusing at once; beyond that it is closed
// unanswered), so Accept never blocks on a slow client.
type limitListener struct {
	net.Listener
	slots       chan struct{}
	refusing    chan struct{}
	headerBytes int
	logger      *slog.Logger
	warnOnce    sync.Once
}

func newLimitListener(l net.Listener, maxConns, headerBytes int, logger *slog.Logger) *limitListener {
	return &limitListener{
		Listener: l, slots: make(chan struct{}, maxConns), refusing: make(chan struct{}, maxRefusing),
		headerBytes: headerBytes, logger: logger,
	}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitedConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
		default:
		}
		l.warnOnce.Do(func() {
			l.logger.Warn("admin API connection limit reached: refusing connections with 503 (logged once)",
				slog.Int("max_conns", cap(l.slots)))
		})
		select {
		case l.refusing <- struct{}{}:
			go l.refuse(c)
		default:
			_ = c.Close()
		}
	}
}

// refuse reads the request's head (a client may take an answer that
// arrives before its request for a protocol error), answers 503 and closes.
func (l *limitListener) refuse(c net.Conn) {
	defer func() { <-l.refusing }()
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(refuseTimeout))
	if _, err := http.ReadRequest(bufio.NewReader(io.LimitReader(c, int64(l.headerBytes)))); err != nil {
		return
	}
	if _, err := io.WriteString(c, refusal); err != nil {
		return
	}
	// Closing with unread input resets the connection, which may destroy
	// the answer before the client reads it: half-close, and read what is
	// left (a body) until the client closes or the deadline passes.
	if hc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = hc.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(refuseLinger))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}

// limitedConn gives its slot back when closed (once, however often it is
// closed).
type limitedConn struct {
	net.Conn
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// CloseWrite half-closes the connection: net/http does so before closing
// after an answer it wrote itself (a 431), so the client reads the answer
// instead of a reset.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
