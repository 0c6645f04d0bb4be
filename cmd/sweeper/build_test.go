package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// `make build` gives a statically linked binary (no program interpreter, no
// shared libraries: it runs in a distroless or scratch image) that knows
// which commit it was built from.
func TestMakeBuildIsStaticAndKnowsItsRevision(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"make", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is needed to test `make build`: %v", tool, err)
			}
			t.Skipf("%s not found: cannot test `make build` here", tool)
		}
	}
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("not a git checkout: %v", err)
		}
		t.Skipf("not a git checkout (%v): `make build` has no revision to stamp", err)
	}
	revision := strings.TrimSpace(string(head))

	bin := t.TempDir()
	build := exec.Command("make", "-C", root, "build", "BIN="+bin)
	out, err := build.CombinedOutput()
	require.NoError(t, err, "make build:\n%s", out)
	require.Contains(t, string(out), "CGO_ENABLED=0", "make build builds without cgo")
	require.Contains(t, string(out), "-trimpath")
	path := filepath.Join(bin, "sweeper")

	f, err := elf.Open(path)
	require.NoError(t, err)
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		require.NotEqual(t, elf.PT_INTERP, p.Type, "a PT_INTERP program header: the binary is dynamically linked")
		require.NotEqual(t, elf.PT_DYNAMIC, p.Type, "a PT_DYNAMIC program header: the binary is dynamically linked")
	}
	libs, err := f.ImportedLibraries()
	require.NoError(t, err)
	require.Empty(t, libs)

	version, err := exec.Command(path, "version").Output()
	require.NoError(t, err)
	require.Contains(t, string(version), "revision: "+revision, "version:\n%s", version)
	describe, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	require.NoError(t, err)
	require.Contains(t, string(version), "sweeper "+strings.TrimSpace(string(describe))+"\n")
	flag, err := exec.Command(path, "--version").Output()
	require.NoError(t, err)
	require.Equal(t, string(version), string(flag))
}
