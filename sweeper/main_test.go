package sweeper_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// mustNew builds a sweeper with no hooks from a config the test knows is valid.
func mustNew(t testing.TB, store sweeper.Store, cfg sweeper.Config) *sweeper.Sweeper {
	t.Helper()
	sw, err := sweeper.New(store, cfg, discard, sweeper.Hooks{})
	require.NoError(t, err)
	return sw
}
