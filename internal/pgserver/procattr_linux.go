package pgserver

import "syscall"

// serverProcAttr runs the server in its own process group, as cred.
// Pdeathsig kills it when this process dies, so a crashed test binary does
// not leave a server running.
func serverProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
