//go:build unix && !linux

package pgserver

import "syscall"

// serverProcAttr runs the server in its own process group, as cred. Only
// Linux can tie the server's life to this process's (Pdeathsig): elsewhere
// a crashed parent leaves the server to its data directory's cleanup.
func serverProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true}
}
