// Package buildinfo owns what the binary knows about its own build: the
// release version (set at link time by `make build` and `make release`), the
// VCS revision and time the Go toolchain stamped, and the Go version. The
// version command and the build_info metric read it from here.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// version is the release version, set at link time:
//
//	go build -ldflags "-X github.com/tasker-sweeper/retrysweeper/internal/buildinfo.version=v1.2.3"
//
// Empty, the module version the toolchain recorded is used instead.
//
// revision, revisionTime and modified are fallbacks for the VCS stamp, set
// at link time the same way: the Go toolchain does not stamp builds in a git
// worktree or from a source archive, and `make build` should still say which
// commit it built.
var (
	version      string
	revision     string
	revisionTime string
	modified     string
)

// Unknown is what a field the build did not record reads as.
const Unknown = "unknown"

// Info describes the running binary.
type Info struct {
	// Version is the release version (-ldflags), else the module version
	// the toolchain recorded ("(devel)" for a plain `go build`), else Unknown.
	Version string `json:"version"`
	// Module is the main module's path.
	Module string `json:"module"`
	// Revision is the VCS commit the binary was built from, else Unknown.
	Revision string `json:"revision"`
	// Time is the commit's time (RFC 3339), else Unknown.
	Time string `json:"time"`
	// Modified says the working tree had uncommitted changes.
	Modified bool `json:"modified"`
	// GoVersion is the toolchain that built the binary.
	GoVersion string `json:"go_version"`
}

var (
	once   sync.Once
	cached Info
)

// Get returns the running binary's build information.
func Get() Info {
	once.Do(func() {
		bi, ok := debug.ReadBuildInfo()
		cached = FromBuildInfo(Linked{Version: version, Revision: revision, Time: revisionTime, Modified: modified == "true"}, bi, ok)
	})
	return cached
}

// Linked is what the linker was told (-ldflags -X); empty fields were not set.
type Linked struct {
	Version, Revision, Time string
	Modified                bool
}

// FromBuildInfo derives Info from the link-time values and what
// debug.ReadBuildInfo returned: the link-time version wins over the module
// version; the toolchain's VCS stamp wins over the link-time revision.
func FromBuildInfo(linked Linked, bi *debug.BuildInfo, ok bool) Info {
	info := Info{
		Version: linked.Version, Revision: linked.Revision, Time: linked.Time,
		Modified: linked.Modified, GoVersion: runtime.Version(),
	}
	if ok && bi != nil {
		info.Module = bi.Main.Path
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		if info.Version == "" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	for _, f := range []*string{&info.Version, &info.Revision, &info.Time} {
		if *f == "" {
			*f = Unknown
		}
	}
	return info
}
