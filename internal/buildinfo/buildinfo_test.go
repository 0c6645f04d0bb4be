package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFromBuildInfo(t *testing.T) {
	t.Parallel()
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/tasker-sweeper/retrysweeper", Version: "v0.0.0-20250101000000-abcdef123456+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abcdef1234567890"},
			{Key: "vcs.time", Value: "2025-01-01T00:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	got := FromBuildInfo(Linked{Version: "v1.2.3", Revision: "0000", Time: "1970-01-01T00:00:00Z"}, bi, true)
	require.Equal(t, Info{
		Version: "v1.2.3", Module: "github.com/tasker-sweeper/retrysweeper", Revision: "abcdef1234567890",
		Time: "2025-01-01T00:00:00Z", Modified: true, GoVersion: "go1.26.8",
	}, got, "the link-time version wins; the toolchain's VCS stamp wins")

	got = FromBuildInfo(Linked{}, bi, true)
	require.Equal(t, "v0.0.0-20250101000000-abcdef123456+dirty", got.Version, "else the module version")

	got = FromBuildInfo(Linked{}, &debug.BuildInfo{Main: debug.Module{Path: "m"}}, true)
	require.Equal(t, Info{Version: Unknown, Module: "m", Revision: Unknown, Time: Unknown, GoVersion: runtime.Version()}, got)

	// No VCS stamp (a git worktree, a source archive): the link-time revision.
	got = FromBuildInfo(Linked{Version: "v1.2.3-dirty", Revision: "abc", Time: "2025-02-02T00:00:00Z", Modified: true},
		&debug.BuildInfo{Main: debug.Module{Path: "m", Version: "(devel)"}}, true)
	require.Equal(t, Info{
		Version: "v1.2.3-dirty", Module: "m", Revision: "abc", Time: "2025-02-02T00:00:00Z",
		Modified: true, GoVersion: runtime.Version(),
	}, got)

	got = FromBuildInfo(Linked{}, nil, false)
	require.Equal(t, Unknown, got.Version)
	require.Equal(t, runtime.Version(), got.GoVersion)
}

func TestGetIsStable(t *testing.T) {
	t.Parallel()
	a, b := Get(), Get()
	require.Equal(t, a, b)
	require.NotEmpty(t, a.Version)
	require.Equal(t, runtime.Version(), a.GoVersion)
}
