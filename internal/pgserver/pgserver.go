// Package pgserver starts a private, throwaway PostgreSQL server from the
// server binaries installed on the machine. The test helper, `sweeper demo`
// and the benchmarks all use it, so "no database running" is never a reason
// for them to fail.
package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configures a throwaway server. The zero value is a fast,
// non-durable server in /dev/shm (falling back to the temp dir).
type Options struct {
	// BinDir holds initdb and postgres. Empty: $PG_BIN, then `pg_config
	// --bindir`, then the newest /usr/lib/postgresql/*/bin.
	BinDir string
	// Parent is the directory the data directory is created in. Empty:
	// /dev/shm when it exists, else os.TempDir().
	Parent string
	// Durable keeps fsync, synchronous_commit and full_page_writes on, for
	// benchmarks that must pay for real commits.
	Durable bool
	// Settings are extra server settings passed as `-c name=value`; they win
	// over the defaults.
	Settings map[string]string
	// Port to listen on; 0 picks a free one.
	Port int
}

// Server is a running throwaway PostgreSQL server. Stop it to remove its data.
type Server struct {
	dataDir string
	port    int
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// dirPrefix marks data directories created by this package, so a later run
// can remove the ones whose owning process died without cleaning up.
const dirPrefix = "sweeper-pgserver-"

// ownerFile records the pid of the process that created a data directory.
const ownerFile = "owner.pid"

// Start initialises a new cluster and starts a server on a free loopback
// port. When running as root it runs initdb and postgres as the `postgres`
// user, since both refuse to run as root.
func Start(ctx context.Context, opts Options) (*Server, error) {
	binDir, err := findBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	parent := opts.Parent
	if parent == "" {
		parent = os.TempDir()
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			parent = "/dev/shm"
		}
	}
	removeOrphans(parent)

	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp(parent, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		_ = os.RemoveAll(root)
		return nil, fmt.Errorf("write owner file: %w", err)
	}
	dataDir := filepath.Join(root, "data")
	if cred != nil {
		if err := os.Chown(root, int(cred.Uid), int(cred.Gid)); err != nil {
			_ = os.RemoveAll(root)
			return nil, fmt.Errorf("chown data directory: %w", err)
		}
	}

	initdb := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"-D", dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		_ = os.RemoveAll(root)
		return nil, fmt.Errorf("initdb: %w: %s", err, lastLines(out, 10))
	}

	// A free port can be taken by another process between choosing it and
	// the server binding it; a few attempts make that race harmless.
	var lastErr error
	for range 5 {
		if ctx.Err() != nil {
			lastErr = ctx.Err()
			break
		}
		port, err := opts.Port, error(nil)
		if port == 0 {
			port, err = freePort()
		}
		if err != nil {
			lastErr = err
			continue
		}
		srv := &Server{dataDir: root, port: port, exited: make(chan struct{})}
		if err := srv.start(ctx, binDir, dataDir, cred, opts); err != nil {
			lastErr = err
			continue
		}
		return srv, nil
	}
	_ = os.RemoveAll(root)
	return nil, fmt.Errorf("start postgres: %w", lastErr)
}

func (s *Server) start(ctx context.Context, binDir, dataDir string, cred *syscall.Credential, opts Options) error {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(s.port),
		"unix_socket_directories": filepath.Dir(dataDir),
		"max_connections":         "300",
		"shared_buffers":          "128MB",
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"logging_collector":       "off",
	}
	if opts.Durable {
		settings["fsync"] = "on"
		settings["synchronous_commit"] = "on"
		settings["full_page_writes"] = "on"
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := []string{"-D", dataDir}
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}

	logFile, err := os.Create(filepath.Join(s.dataDir, fmt.Sprintf("server-%d.log", s.port)))
	if err != nil {
		return fmt.Errorf("create server log: %w", err)
	}
	defer func() { _ = logFile.Close() }()

	// The server is not bound to ctx: it must outlive the start-up context.
	cmd := exec.Command(filepath.Join(binDir, "postgres"), args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = serverProcAttr(cred)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run postgres: %w", err)
	}
	s.cmd = cmd
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()

	deadline := time.Now().Add(60 * time.Second)
	for {
		pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(pingCtx, s.URL("postgres"))
		if err == nil {
			_ = conn.Close(pingCtx)
			cancel()
			return nil
		}
		cancel()
		select {
		case <-s.exited:
			log, _ := os.ReadFile(logFile.Name())
			return fmt.Errorf("postgres exited: %w: %s", s.waitErr, lastLines(log, 10))
		case <-ctx.Done():
			s.kill()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("postgres not accepting connections after 60s: %w", err)
		}
	}
}

// URL is a connection URL for database on this server, as the superuser.
func (s *Server) URL(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port is the loopback TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Stop shuts the server down (fast shutdown: open sessions are ended) and
// removes its data directory.
func (s *Server) Stop() error {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			s.kill()
		}
	}
	if err := os.RemoveAll(s.dataDir); err != nil {
		return fmt.Errorf("remove data directory: %w", err)
	}
	return nil
}

func (s *Server) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	// The negative pid signals the whole process group: postmaster and backends.
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
}

// serverCredential is the user initdb and postgres run as: nil (the current
// user) unless running as root, where it is the `postgres` user.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a 'postgres' user to run the server as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse gid of postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// findBinDir locates the PostgreSQL server binaries.
func findBinDir(explicit string) (string, error) {
	candidates := []string{explicit, os.Getenv("PG_BIN")}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(versions, func(i, j int) bool { return pgMajor(versions[i]) > pgMajor(versions[j]) })
	candidates = append(candidates, versions...)
	if p, err := exec.LookPath("postgres"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		if isExecutable(filepath.Join(dir, "postgres")) && isExecutable(filepath.Join(dir, "initdb")) {
			return dir, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, postgres) found: install PostgreSQL >= 15 " +
		"(Debian: apt-get install postgresql) or set PG_BIN to their directory")
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// removeOrphans deletes data directories left behind by processes that died
// before they could stop their server (a killed test binary, say).
func removeOrphans(parent string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, dirPrefix+"*"))
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // being created right now, or not ours to judge
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(dir)
		}
	}
}

func lastLines(out []byte, n int) string {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte(" | ")))
}
